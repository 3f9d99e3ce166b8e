"""The A1111 routes draw the web UI's noise: its default source (GPU) unless override_settings names
another, its ENSD, and the body's variation seed and seed resize fields (sdrun.serve.a1111_api)."""

import json
from collections.abc import Callable

import numpy as np
import pytest
from serve_helpers import PROMPT, decode, png_parameters

from sdrun.infotext import parse_parameters

pytest.importorskip("fastapi")

FEATURES = {"subseed": 9, "subseed_strength": 0.4, "seed_resize_from_w": 48, "seed_resize_from_h": 80}


def test_a_body_with_the_web_uis_seed_fields(client, library_pixels: Callable[..., np.ndarray]) -> None:
    body = {"prompt": PROMPT, "seed": 3, "steps": 3, "sampler_name": "Euler a", "batch_size": 2, **FEATURES,
            "override_settings": {"randn_source": "CPU", "eta_noise_seed_delta": 31337}}  # fmt: skip
    answer = client.post("/sdapi/v1/txt2img", json=body)
    assert answer.status_code == 200, answer.text
    made = answer.json()
    info = json.loads(made["info"])
    assert (info["all_seeds"], info["all_subseeds"], info["subseed_strength"]) == ([3, 3], [9, 10], 0.4)
    assert (info["seed_resize_from_w"], info["seed_resize_from_h"]) == (48, 80)
    library = dict(steps=3, sampler="k_euler_a", random_source="cpu", eta_noise_seed_delta=31337,
                   subseed_strength=0.4, seed_resize_from=(48, 80))  # fmt: skip
    for index, image in enumerate(made["images"]):
        text = png_parameters(image)
        assert f"Variation seed: {9 + index}, " in text and "ENSD: 31337, RNG: CPU, Version: " in text
        assert parse_parameters(text).random_source == "cpu"
        np.testing.assert_array_equal(decode(image), library_pixels(3, subseed=9 + index, **library))


def test_the_default_source_is_the_web_uis_gpu(client, library_pixels: Callable[..., np.ndarray]) -> None:
    made = client.post("/sdapi/v1/txt2img", json={"prompt": PROMPT, "seed": 8, "steps": 2}).json()
    assert "RNG" not in png_parameters(made["images"][0])
    np.testing.assert_array_equal(decode(made["images"][0]), library_pixels(8, steps=2, random_source="gpu"))
    assert not np.array_equal(decode(made["images"][0]), library_pixels(8, steps=2)), "power: not numpy's"


def test_an_unknown_source_is_one_line(client) -> None:
    body = {"prompt": PROMPT, "steps": 1, "override_settings": {"randn_source": "TPU"}}
    answer = client.post("/sdapi/v1/txt2img", json=body)
    assert answer.status_code == 400 and "random source 'TPU' is unknown" in answer.json()["detail"]
