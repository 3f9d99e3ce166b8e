"""txt2img's hires fix through the AUTOMATIC1111 route: `enable_hr` with A1111's hr_* fields gives the
library's two-pass image at the hires size, and the infotext the web UI writes for it."""

import json

import numpy as np
import pytest
from serve_helpers import PROMPT, decode

from sdrun.infotext import parse_parameters
from sdrun.pipeline import Pipeline
from sdrun.settings import HiresFix

pytest.importorskip("fastapi")

BODY = {"prompt": PROMPT, "seed": 21, "steps": 3, "sampler_name": "Euler", "scheduler": "automatic"}


def test_enable_hr_gives_the_hires_image_and_its_infotext(client, reference: Pipeline) -> None:
    body = {**BODY, "enable_hr": True, "hr_scale": 2, "hr_second_pass_steps": 2, "denoising_strength": 0.6}
    answer = client.post("/sdapi/v1/txt2img", json=body)
    assert answer.status_code == 200, answer.text
    (image,) = [decode(item) for item in answer.json()["images"]]
    assert image.shape == (128, 128, 3)
    hires = HiresFix(scale=2.0, steps=2, strength=0.6, upscaler="Latent")
    # The A1111 routes draw the web UI's default GPU noise.
    expected = reference.generate(
        PROMPT, seed=21, steps=3, sampler="k_euler", hires=hires, random_source="gpu"
    ).images[0]
    np.testing.assert_array_equal(image, np.asarray(expected))
    info = json.loads(answer.json()["info"])
    (infotext,) = info["infotexts"]
    assert "Size: 64x64, " in infotext
    hires_fields = "Denoising strength: 0.6, Hires upscale: 2, Hires steps: 2, Hires upscaler: Latent"
    assert f"{hires_fields}, Version: " in infotext
    assert (info["width"], info["height"], info["denoising_strength"]) == (64, 64, 0.6)
    read = parse_parameters(infotext).hires
    assert read == HiresFix(scale=2.0, steps=2, strength=0.6, sampler="k_euler", schedule_type="Uniform")


def test_without_enable_hr_the_hr_fields_are_ignored(client) -> None:
    answer = client.post("/sdapi/v1/txt2img", json={**BODY, "hr_scale": 2, "hr_upscaler": "Lanczos"})
    assert answer.status_code == 200
    assert decode(answer.json()["images"][0]).shape == (64, 64, 3)
    assert "Hires" not in json.loads(answer.json()["info"])["infotexts"][0]


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"hr_upscaler": "R-ESRGAN 4x+"}, "unknown hires upscaler 'R-ESRGAN 4x+': sdrun has Latent"),
        ({"hr_resize_x": 8192, "hr_resize_y": 8192}, "8192x8192 is 67,108,864 pixels, above the limit"),
    ],
)
def test_refused_in_one_line(client, fields: dict, message: str) -> None:
    answer = client.post("/sdapi/v1/txt2img", json={**BODY, "enable_hr": True, **fields})
    assert answer.status_code == 400 and message in answer.json()["detail"]
