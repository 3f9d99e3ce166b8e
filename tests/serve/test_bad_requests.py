"""Bad bodies, oversized bodies, image bombs, bad masks and missing keys: each refused with a 4xx and a
one-line message before any work, in the error shape of the API called."""

import base64
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from serve_helpers import PROMPT, config_for, init_image, left_half_mask, png_b64, png_bytes

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from sdrun.serve.app import create_app  # noqa: E402
from sdrun.serve.config import MAX_INIT_PIXELS  # noqa: E402
from sdrun.serve.jobs import ModelWorker  # noqa: E402

GENERATIONS = "/v1/images/generations"
EDITS = "/v1/images/edits"
TXT2IMG = "/sdapi/v1/txt2img"
IMG2IMG = "/sdapi/v1/img2img"


def _message(response) -> str:
    body = response.json()
    return body["error"]["message"] if isinstance(body["error"], dict) else body["detail"]


def _assert_refused(response, status: int, words: str) -> None:
    assert response.status_code == status, response.text[:300]
    message = _message(response)
    assert words in message and "\n" not in message and len(message) < 300, message


def _png_header_claiming(width: int, height: int) -> bytes:
    """A few hundred bytes that say "PNG, width x height": a decompression bomb's calling card."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


_INPAINT = {"prompt": PROMPT, "init_images": [png_b64(init_image())], "mask": png_b64(left_half_mask())}


@pytest.mark.parametrize(
    ("path", "body", "words"),
    [
        (GENERATIONS, {"prompt": 5}, "prompt: Input should be a valid string"),
        (GENERATIONS, {"size": "64x64"}, "prompt: Field required"),
        (GENERATIONS, {"prompt": PROMPT, "n": "two"}, "n: Input should be a valid integer"),
        (GENERATIONS, {"prompt": PROMPT, "seed": True}, "seed: Input should be a valid integer"),
        (GENERATIONS, {"prompt": PROMPT, "n": 17}, "n: Input should be less than or equal to 16"),
        (GENERATIONS, {"prompt": PROMPT, "size": "-64x64"}, "is not WIDTHxHEIGHT"),
        (GENERATIONS, {"prompt": PROMPT, "size": "60x64"}, "multiple of 8"),
        (GENERATIONS, {"prompt": PROMPT, "size": "4096x4096"}, "above the limit"),
        (GENERATIONS, {"prompt": PROMPT, "steps": 151}, "steps: Input should be less than or equal to 150"),
        (GENERATIONS, {"prompt": "x" * 30_001}, "prompt: String should have at most 30000 characters"),
        (TXT2IMG, {"prompt": PROMPT, "width": -64}, "width: Input should be greater than or equal to 1"),
        (TXT2IMG, {"prompt": PROMPT, "steps": 2.5}, "steps: Input should be a valid integer"),
        (TXT2IMG, {"prompt": PROMPT, "scheduler": "beta"}, "unknown scheduler"),
        (IMG2IMG, {"prompt": PROMPT, "init_images": ["not base64!"]}, "init_images[0] is not base64"),
        (
            IMG2IMG,
            {"prompt": PROMPT, "init_images": [base64.b64encode(b"GIF89a...").decode()]},
            "cannot read",
        ),
        (IMG2IMG, {"prompt": PROMPT, "init_images": []}, "init_images: List should have at least 1 item"),
        (
            IMG2IMG,
            {
                "prompt": PROMPT,
                "init_images": [base64.b64encode(_png_header_claiming(60_000, 60_000)).decode()],
            },
            "scale it down",
        ),
        (IMG2IMG, _INPAINT | {"mask": "not base64!"}, "mask is not base64"),
        (IMG2IMG, _INPAINT | {"mask": base64.b64encode(b"GIF89a...").decode()}, "cannot read mask"),
        (
            IMG2IMG,
            _INPAINT | {"mask": base64.b64encode(_png_header_claiming(10_000, 6_000)).decode()},
            f"the mask is 10000x6000 (60,000,000 pixels), above the limit of {MAX_INIT_PIXELS:,}",
        ),
        (IMG2IMG, _INPAINT | {"mask_blur": 65}, "mask blur 65 is out of range"),
        (
            IMG2IMG,
            _INPAINT | {"inpainting_mask_invert": 2},
            "inpainting_mask_invert: Input should be less than or equal to 1",
        ),
    ],
)
def test_bad_bodies_get_a_400_with_one_line(client: TestClient, path: str, body: dict, words: str) -> None:
    _assert_refused(client.post(path, json=body), 400, words)


@pytest.mark.parametrize(
    ("mask", "words"),
    [
        (b"GIF89a...", "cannot read mask mask"),
        (_png_header_claiming(10_000, 6_000), "the mask is 10000x6000 (60,000,000 pixels), above the limit"),
        # The library's kind of mask (white = repaint): OpenAI's masks mean their transparency.
        (png_bytes(left_half_mask()), "the mask has no transparency"),
        ("a text field", "send the mask as a PNG file"),
    ],
    ids=["not an image", "too many pixels", "no transparency", "not a file"],
)
def test_bad_openai_masks_get_a_400_with_one_line(client: TestClient, mask: bytes | str, words: str) -> None:
    image = {"image": ("image.png", png_bytes(init_image()), "image/png")}
    if isinstance(mask, str):
        answer = client.post(EDITS, files=image, data={"prompt": PROMPT, "mask": mask})
    else:
        answer = client.post(EDITS, files=image | {"mask": ("mask.png", mask)}, data={"prompt": PROMPT})
    _assert_refused(answer, 400, words)
    assert answer.json()["error"]["type"] == "invalid_request_error"


def test_broken_json_and_openai_error_shape(client: TestClient) -> None:
    answer = client.post(GENERATIONS, content=b'{"prompt": ', headers={"Content-Type": "application/json"})
    _assert_refused(answer, 400, "not valid JSON")
    assert set(answer.json()["error"]) == {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def small_body_client(served_folder: Path) -> Iterator[TestClient]:
    with TestClient(create_app(config_for(served_folder, max_body_bytes=4096))) as test_client:
        yield test_client


def test_oversized_bodies_get_413_declared_or_streamed(small_body_client: TestClient) -> None:
    body = b'{"prompt": "' + b"x" * 8000 + b'"}'
    _assert_refused(
        small_body_client.post(GENERATIONS, content=body, headers={"Content-Type": "application/json"}),
        413,
        "larger than the 4,096 bytes",
    )
    # No Content-Length (chunked): refused as the bytes pass the bound.
    streamed = small_body_client.post(
        TXT2IMG, content=iter([body[:3000], body[3000:]]), headers={"Content-Type": "application/json"}
    )
    _assert_refused(streamed, 413, "larger than the 4,096 bytes")
    assert small_body_client.post(GENERATIONS, json={"prompt": PROMPT, "steps": 1}).status_code == 200


def test_an_api_key_guards_every_route_but_health(served_folder: Path) -> None:
    with TestClient(create_app(config_for(served_folder, api_key="s3cret"))) as guarded:
        assert guarded.get("/health").status_code == 200
        for path in ["/v1/models", "/sdapi/v1/sd-models", "/sdapi/v1/progress", "/metrics"]:
            _assert_refused(guarded.get(path), 401, "Authorization: Bearer KEY")
            _assert_refused(guarded.get(path, headers={"Authorization": "Bearer wrong"}), 401, "API key")
            assert guarded.get(path, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        refused = guarded.post(GENERATIONS, json={"prompt": PROMPT})
        assert refused.json()["error"]["type"] == "authentication_error"


def test_settings_the_model_cannot_run_are_refused_before_queueing(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The library's own checks (Pipeline.prepare) answer at once, not when the job's turn comes."""

    def never_queued(worker: ModelWorker, settings: dict) -> None:
        raise AssertionError(f"queued: {settings}")

    monkeypatch.setattr(ModelWorker, "submit", never_queued)
    _assert_refused(client.post(GENERATIONS, json={"prompt": PROMPT, "size": "60x64"}), 400, "multiple of 8")
    _assert_refused(client.post(TXT2IMG, json={"prompt": PROMPT, "width": 60}), 400, "multiple of")
