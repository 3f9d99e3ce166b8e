"""eta, the setting added end to end after the runtime was reshaped around one settings object (issue 27):
the library, the CLI, both HTTP APIs and a PNG's parameters give the same picture, and the value reaches
the sampler (whose DDIM eta matches diffusers' in tests/runtime/test_samplers.py)."""

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from serve_helpers import PROMPT, decode, png_parameters

from sdrun.errors import SettingsError
from sdrun.infotext import format_parameters, parse_parameters
from sdrun.pipeline import Pipeline
from sdrun.png_files import read_png_settings, save_png
from sdrun.settings import GenerationSettings

DDIM = {"sampler": "ddim", "steps": 6}
RUNTIME = Path(__file__).resolve().parents[2] / "runtime"


def test_eta_reaches_the_sampler_and_the_png(reference: Pipeline, tmp_path: Path) -> None:
    made = reference.generate(PROMPT, seed=5, eta=0.5, **DDIM)
    deterministic = reference.generate(PROMPT, seed=5, **DDIM)
    # Power: DDIM's eta re-injects noise at every step, so the picture moves far.
    assert np.abs(np.asarray(made.images[0], float) - np.asarray(deterministic.images[0])).mean() > 5
    [settings] = made.settings
    assert settings.eta == 0.5 and deterministic.settings[0].eta is None
    text = format_parameters(settings)
    # A1111's "DDIM" label is its own DDIM (k_ddim): sdrun's diffusers one says which it is.
    assert "Sampler: DDIM, Schedule type: Uniform," in text
    assert ", Eta DDIM: 0.5, sdrun sampler: ddim, Version: " in text
    assert "Eta" not in format_parameters(deterministic.settings[0])  # the sampler's default is not written
    assert parse_parameters(text) == settings
    path = tmp_path / "eta.png"
    save_png(made.images[0], path, settings)
    again = reference.generate(GenerationSettings.from_image(read_png_settings(path)))
    assert np.array_equal(np.asarray(again.images[0]), np.asarray(made.images[0]))


def test_a_sampler_without_eta_refuses_one(reference: Pipeline) -> None:
    with pytest.raises(SettingsError, match="eta applies to the ddim, ddim_trailing, k_.*, tcd samplers"):
        reference.prepare(PROMPT, sampler="euler", eta=0.5)
    with pytest.raises(SettingsError, match="eta -0.5 for ddim is out of range"):
        reference.prepare(PROMPT, sampler="ddim", eta=-0.5)


def test_both_apis_take_eta(client, library_pixels: Callable[..., np.ndarray]) -> None:
    expected = library_pixels(5, eta=0.5, **DDIM)
    body = {"prompt": PROMPT, "seed": 5, "steps": 6, "sampler_name": "DDIM", "eta": 0.5}
    a1111 = client.post("/sdapi/v1/txt2img", json=body)
    assert a1111.status_code == 200, a1111.text
    # The A1111 route draws the web UI's default noise (GPU), the OpenAI route sdrun's own.
    assert np.array_equal(
        decode(a1111.json()["images"][0]),
        library_pixels(5, eta=0.5, random_source="gpu", steps=6, sampler="k_ddim"),  # A1111's "DDIM"
    )
    assert "Eta DDIM: 0.5" in png_parameters(a1111.json()["images"][0])
    openai = client.post(
        "/v1/images/generations", json={"prompt": PROMPT, "seed": 5, "eta": 0.5, **DDIM}
    )
    assert openai.status_code == 200, openai.text
    assert np.array_equal(decode(openai.json()["data"][0]["b64_json"]), expected)


def test_the_cli_takes_eta(
    served_folder: Path, library_pixels: Callable[..., np.ndarray], tmp_path: Path
) -> None:
    out = tmp_path / "cli.png"
    command = [sys.executable, "-m", "sdrun", PROMPT, "--model", str(served_folder), "--seed", "5"]
    command += ["--sampler", "ddim", "--steps", "6", "--eta", "0.5", "--out", str(out), "--quiet"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(RUNTIME), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert np.array_equal(np.asarray(Image.open(out).convert("RGB")), library_pixels(5, eta=0.5, **DDIM))
