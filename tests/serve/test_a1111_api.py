"""The AUTOMATIC1111 API as Open WebUI and SillyTavern call it, with plain HTTP: options, models,
samplers, txt2img and img2img (PNGs with their parameters, info with the seeds), inpainting masks, progress
and interrupt."""

import json
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps
from serve_helpers import (
    LEFT,
    PROMPT,
    RIGHT,
    SIDE,
    TEST_HOSTS,
    assert_repainted_only,
    decode,
    init_image,
    left_half_mask,
    png_b64,
    png_parameters,
)

from sdrun.infotext import parse_parameters
from sdrun.pipeline import Pipeline
from sdrun.random_sources import GPU  # the A1111 routes draw the web UI's default noise
from sdrun.serve.config import ServeConfig

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")


def test_the_client_handshake(client, served_folder: Path) -> None:
    options = client.get("/sdapi/v1/options").json()
    assert options["sd_model_checkpoint"] == served_folder.name
    models = client.get("/sdapi/v1/sd-models").json()
    assert [model["title"] for model in models] == [served_folder.name]
    samplers = {sampler["name"]: sampler["aliases"] for sampler in client.get("/sdapi/v1/samplers").json()}
    assert {"Euler a", "DPM++ 2M", "DDIM", "LCM"} <= set(samplers)
    assert {"dpmpp_2m_karras", "k_dpmpp_2m"} <= set(samplers["DPM++ 2M"])
    assert {"Heun", "DPM2 a", "DPM++ SDE", "DPM++ 2M SDE"} <= set(samplers)
    schedulers = {item["name"]: item["label"] for item in client.get("/sdapi/v1/schedulers").json()}
    assert schedulers == {
        "automatic": "Automatic",
        "uniform": "Uniform",
        "karras": "Karras",
        "exponential": "Exponential",
        "sgm_uniform": "SGM Uniform",
        "simple": "Simple",
        "normal": "Normal",
    }
    assert (
        client.post("/sdapi/v1/options", json={"sd_model_checkpoint": served_folder.name}).status_code == 200
    )
    refused = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "v1-5-pruned.safetensors"})
    assert refused.status_code == 400 and "not served here" in refused.json()["detail"]


def test_txt2img_gives_the_librarys_images_with_their_seeds(
    client, library_pixels: Callable[..., np.ndarray]
) -> None:
    body = {
        "prompt": PROMPT,
        "seed": 40,
        "steps": 3,
        "cfg_scale": 5,
        "sampler_name": "DPM++ 2M",
        "scheduler": "Karras",
        "batch_size": 2,
        "n_iter": 1,
        "restore_faces": False,  # one of the many fields clients send that sdrun has no use for
    }
    answer = client.post("/sdapi/v1/txt2img", json=body)
    assert answer.status_code == 200, answer.text
    made = answer.json()
    info = json.loads(made["info"])
    assert (
        info["all_seeds"] == [40, 41] and info["sampler_name"] == "DPM++ 2M" and info["scheduler"] == "Karras"
    )
    assert made["parameters"]["seed"] == 40 and len(made["images"]) == 2
    for index, image in enumerate(made["images"]):
        settings = parse_parameters(png_parameters(image))
        assert (settings.seed, settings.sampler, settings.schedule_type, settings.guidance_scale) == (
            40 + index,
            "k_dpmpp_2m",
            "Karras",
            5.0,
        )
        expected = library_pixels(
            40 + index,
            steps=3,
            guidance_scale=5.0,
            sampler="k_dpmpp_2m",
            schedule_type="Karras",
            random_source=GPU,
        )
        np.testing.assert_array_equal(decode(image), expected)


def test_omitted_fields_take_the_models_defaults_and_seed_minus_one_is_random(
    client, library_pixels: Callable[..., np.ndarray]
) -> None:
    made = client.post("/sdapi/v1/txt2img", json={"prompt": PROMPT, "seed": 9}).json()
    np.testing.assert_array_equal(decode(made["images"][0]), library_pixels(9, random_source=GPU))
    info = json.loads(made["info"])  # the folder's defaults (conftest.GENERATION_DEFAULTS), A1111's names
    assert (info["sampler_name"], info["scheduler"], info["steps"], info["cfg_scale"]) == (
        "DPM++ 2M",
        "Uniform",
        7,
        3,
    )
    seeds = {
        json.loads(client.post("/sdapi/v1/txt2img", json={"prompt": PROMPT, "steps": 1}).json()["info"])[
            "seed"
        ]
        for _ in range(2)
    }
    assert len(seeds) == 2


def test_older_clients_sampler_index_names_the_sampler_when_sampler_name_is_absent(
    client, library_pixels: Callable[..., np.ndarray]
) -> None:
    """A1111's API reads `sampler_name or sampler_index` (older clients send only the latter). Euler a is
    neither the folder's default (DPM++ 2M) nor the same picture as it."""
    body = {"prompt": PROMPT, "seed": 12, "steps": 3, "sampler_index": "Euler a"}
    made = client.post("/sdapi/v1/txt2img", json=body).json()
    assert json.loads(made["info"])["sampler_name"] == "Euler a"
    assert parse_parameters(png_parameters(made["images"][0])).sampler == "k_euler_a"
    np.testing.assert_array_equal(
        decode(made["images"][0]), library_pixels(12, steps=3, sampler="k_euler_a", random_source=GPU)
    )
    both = {**body, "sampler_name": "DDIM"}
    made = client.post("/sdapi/v1/txt2img", json=both).json()
    assert json.loads(made["info"])["sampler_name"] == "DDIM", "sampler_name wins over sampler_index"
    np.testing.assert_array_equal(
        decode(made["images"][0]), library_pixels(12, steps=3, sampler="k_ddim", random_source=GPU)
    )


def test_img2img_from_a_data_url(client, reference: Pipeline) -> None:
    start = Image.new("RGB", (64, 64), (30, 30, 200))
    data_url = "data:image/png;base64," + png_b64(start)
    body = {"prompt": PROMPT, "init_images": [data_url], "seed": 3, "steps": 4, "denoising_strength": 0.6}
    made = client.post("/sdapi/v1/img2img", json=body).json()
    expected = reference.generate(
        PROMPT, seed=3, steps=4, strength=0.6, init_image=start, random_source=GPU
    ).images[0]
    np.testing.assert_array_equal(decode(made["images"][0]), np.asarray(expected))
    assert json.loads(made["info"])["denoising_strength"] == 0.6


def test_img2img_with_a_mask_repaints_its_white_area_or_with_invert_its_black_one(
    client, reference: Pipeline
) -> None:
    start, mask = init_image(), left_half_mask()
    body = {"prompt": PROMPT, "init_images": [png_b64(start)], "mask": png_b64(mask), "seed": 4, "steps": 4}
    made = client.post("/sdapi/v1/img2img", json={**body, "mask_blur": 0}).json()
    assert_repainted_only(decode(made["images"][0]), start, repainted=LEFT, kept=RIGHT)
    assert parse_parameters(png_parameters(made["images"][0])).mask_blur == 0
    assert made["parameters"]["mask_blur"] == 0 and "mask" not in made["parameters"]

    # Inverted, with A1111's default blur (4 pixels): kept where the blurred edge does not reach.
    inverted = client.post("/sdapi/v1/img2img", json={**body, "inpainting_mask_invert": 1}).json()
    picture = decode(inverted["images"][0])
    assert_repainted_only(picture, start, repainted=RIGHT, kept=slice(0, SIDE // 4))
    expected = reference.generate(
        PROMPT, seed=4, steps=4, init_image=start, mask=ImageOps.invert(mask), random_source=GPU
    )
    np.testing.assert_array_equal(picture, np.asarray(expected.images[0]))
    assert parse_parameters(png_parameters(inverted["images"][0])).mask_blur == 4


def test_sampler_names_map_both_ways_and_unknown_ones_are_refused(client) -> None:
    for name, scheduler, sdrun_names in [
        ("Euler a", None, ("k_euler_a", "Uniform")),
        ("DPM++ 2M", None, ("k_dpmpp_2m", "Karras")),  # no scheduler is Automatic: Karras for DPM++ 2M
        ("DPM++ 2M Karras", None, ("k_dpmpp_2m", "Karras")),  # the label before web UI 1.9
        ("DPM++ 2M", "automatic", ("k_dpmpp_2m", "Karras")),
        ("DPM++ 2M", "uniform", ("k_dpmpp_2m", "Uniform")),
        ("Euler", "sgm_uniform", ("k_euler", "SGM Uniform")),
        ("DPM++ SDE", "Exponential", ("k_dpmpp_sde", "Exponential")),
        ("DDIM", None, ("k_ddim", None)),
        ("dpmpp_2m_karras", None, ("dpmpp_2m_karras", None)),  # sdrun's own names
    ]:
        body = {"prompt": PROMPT, "seed": 1, "steps": 2, "sampler_name": name, "scheduler": scheduler}
        made = client.post("/sdapi/v1/txt2img", json=body).json()
        settings = parse_parameters(png_parameters(made["images"][0]))
        assert (settings.sampler, settings.schedule_type) == sdrun_names, name
    for name in ["DPM fast", "Restart", "DDIM Karras"]:
        refused = client.post("/sdapi/v1/txt2img", json={"prompt": PROMPT, "sampler_name": name})
        assert refused.status_code == 400 and "unknown sampler" in refused.json()["detail"], name


def test_progress_while_a_job_runs_then_interrupt(server_url: str) -> None:
    long_job = {"prompt": PROMPT, "seed": 2, "steps": 150, "batch_size": 4}
    answer: dict = {}

    def run() -> None:
        started = time.monotonic()
        answer["response"] = httpx.post(f"{server_url}/sdapi/v1/txt2img", json=long_job, timeout=60)
        answer["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 10
    while True:
        progress = httpx.get(f"{server_url}/sdapi/v1/progress").json()
        if progress["state"]["sampling_step"] >= 2:
            break
        assert time.monotonic() < deadline, progress
        time.sleep(0.02)
    assert progress["state"]["job_count"] == 1 and progress["state"]["sampling_steps"] == 150
    assert 0 < progress["progress"] < 1 and progress["eta_relative"] > 0
    assert httpx.post(f"{server_url}/sdapi/v1/interrupt").status_code == 200
    thread.join(30)
    made = answer["response"].json()
    info = json.loads(made["info"])
    # Stopped at the next step: the image in progress is decoded from where it got, no later one starts.
    assert info["interrupted"] and len(made["images"]) == 1 and answer["seconds"] < 10
    assert httpx.get(f"{server_url}/sdapi/v1/progress").json()["state"]["job_count"] == 0


def test_sd_model_checkpoint_switches_among_the_served_folders(served_folder: Path, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from sdrun.serve.app import create_app

    other = Path(shutil.copytree(served_folder, tmp_path / "other-model"))
    config = ServeConfig(folders=(served_folder, other), provider="cpu", allowed_hosts=TEST_HOSTS)
    body = {"prompt": PROMPT, "seed": 1, "steps": 1}
    with TestClient(create_app(config)) as two:
        assert [model["title"] for model in two.get("/sdapi/v1/sd-models").json()] == [
            served_folder.name,
            other.name,
        ]

        def model_used(**extra: object) -> str:
            made = two.post("/sdapi/v1/txt2img", json={**body, **extra}).json()
            return json.loads(made["info"])["sd_model_name"]

        assert model_used() == served_folder.name
        assert two.post("/sdapi/v1/options", json={"sd_model_checkpoint": other.name}).status_code == 200
        assert two.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == other.name
        assert model_used() == other.name
        assert model_used(override_settings={"sd_model_checkpoint": served_folder.name}) == served_folder.name
        refused = two.post(
            "/sdapi/v1/txt2img", json={**body, "override_settings": {"sd_model_checkpoint": "x"}}
        )
        assert refused.status_code == 400 and "not served here" in refused.json()["detail"]


def test_override_settings_set_emphasis_and_pad_conds(client) -> None:
    """A1111's option names in override_settings reach the generation and its infotext; bad values are
    the library's 400s."""
    body = {"prompt": "a (red:1.3) cube", "negative_prompt": " ".join(["blurry"] * 80), "seed": 2, "steps": 1}
    options = {"emphasis": "No norm", "pad_cond_uncond": True}
    made = client.post("/sdapi/v1/txt2img", json={**body, "override_settings": options}).json()
    settings = parse_parameters(png_parameters(made["images"][0]))
    assert (settings.emphasis, settings.pad_conds) == ("No norm", True)
    refused = client.post("/sdapi/v1/txt2img", json={**body, "override_settings": {"emphasis": "Strong"}})
    assert refused.status_code == 400 and "emphasis 'Strong' is unknown" in refused.json()["detail"]
