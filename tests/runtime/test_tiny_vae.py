"""`sdrun --vae tiny|full` on a folder built with `sdexport build --tiny-vae`: the tiny path decodes (and
encodes) with TAESD, checked against diffusers' AutoencoderTiny holding the same random weights."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result
from PIL import Image
from taesd_reference import random_autoencoder_tiny, save_madebyollin_files

from sdrun.cli import main
from sdrun.images import to_pixels
from sdrun.pipeline import Pipeline

PROMPT = "a red cube"
SETTINGS = {"steps": 3, "seed": 5}


@pytest.fixture(scope="module")
def reference():
    return random_autoencoder_tiny(seed=7)


@pytest.fixture(scope="module")
def tiny_vae_folder(tmp_path_factory: pytest.TempPathFactory, tiny_diffusers_dir: Path, reference) -> Path:
    """`sdexport build` of the tiny pipeline with madebyollin's decoder and encoder files (not modified)."""
    decoder, encoder = save_madebyollin_files(reference, tmp_path_factory.mktemp("taesd"))
    out = tmp_path_factory.mktemp("tiny-vae") / "tiny"
    build = "from sdexport.cli import main; main()"
    command = [
        sys.executable,
        "-c",
        build,
        "build",
        str(tiny_diffusers_dir),
        "--output",
        str(out),
        "--tiny-vae",
        str(decoder),
        "--tiny-vae",
        str(encoder),
        "--skip-validation",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def _generate(folder: Path, out: Path, *options: str) -> Result:
    arguments = [
        PROMPT,
        "--model",
        folder,
        "--out",
        out,
        "--steps",
        SETTINGS["steps"],
        "--seed",
        SETTINGS["seed"],
    ]
    return CliRunner().invoke(main, [str(argument) for argument in [*arguments, *options]])


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image, dtype=np.int16)


def _copy_with_manifest(folder: Path, target: Path, without: str | None = None, **defaults: str) -> Path:
    """A copy of `folder` without the graph folder `without`, and with `defaults` as generation defaults."""
    copy = Path(shutil.copytree(folder, target))
    manifest = json.loads((copy / "sdexport_manifest.json").read_text())
    if without:
        shutil.rmtree(copy / without)
        manifest["files"] = {
            name: entry for name, entry in manifest["files"].items() if not name.startswith(f"{without}/")
        }
    manifest["generation_defaults"] = {**manifest["generation_defaults"], **defaults}
    (copy / "sdexport_manifest.json").write_text(json.dumps(manifest))
    return copy


def test_vae_tiny_decodes_the_latents_with_taesd(tiny_vae_folder: Path, reference, tmp_path: Path) -> None:
    tiny_png, full_png = tmp_path / "tiny.png", tmp_path / "full.png"
    tiny = _generate(tiny_vae_folder, tiny_png, "--vae", "tiny")
    full = _generate(tiny_vae_folder, full_png)  # the folder's default: full
    assert tiny.exit_code == 0 and full.exit_code == 0, tiny.output + full.output

    # The same latents (the VAE takes no part in text-to-image sampling), decoded by diffusers' TAESD.
    reached = []
    pipeline = Pipeline.load(tiny_vae_folder, "cpu", vae="full")
    image = pipeline.generate(PROMPT, callback=lambda step, total, x: reached.append(x), **SETTINGS).images[0]
    with torch.no_grad():
        decoded = reference.decode(torch.from_numpy(reached[-1])).sample[0].numpy()
    expected = (np.clip(decoded.transpose(1, 2, 0) / 2 + 0.5, 0, 1) * 255).round()

    assert np.array_equal(np.asarray(image), _pixels(full_png))  # the latents are those the CLI decoded
    assert np.abs(_pixels(tiny_png) - expected).max() <= 2
    assert np.abs(_pixels(full_png) - expected).mean() > 10  # the full VAE's picture is another one


def test_image_to_image_encodes_with_taesd(tiny_vae_folder: Path, reference) -> None:
    pipeline = Pipeline.load(tiny_vae_folder, "cpu", vae="tiny")
    facts = pipeline.facts
    assert (facts.vae_decoder, facts.vae_encoder) == ("vae_decoder_tiny", "vae_encoder_tiny")
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (64, 48, 3), dtype=np.uint8))
    distribution = pipeline.encode_image(image)
    with torch.no_grad():
        expected = reference.encode(torch.from_numpy(to_pixels(image))).latents.numpy()
    assert not distribution.std.any()  # one point: TAESD's latent, in vae_decoder's units
    np.testing.assert_allclose(distribution.mean * facts.latent_scale, expected, atol=1e-4, rtol=1e-4)
    result = pipeline.generate(PROMPT, init_image=image, strength=0.5, **SETTINGS)
    assert result.images[0].size == (48, 64)


def test_folder_defaults_choose_the_vae_and_a_missing_tiny_encoder_falls_back(
    tiny_vae_folder: Path, tmp_path: Path
) -> None:
    copy = _copy_with_manifest(tiny_vae_folder, tmp_path / "copy", without="vae_encoder_tiny", vae="tiny")
    pipeline = Pipeline.load(copy, "cpu")
    assert (pipeline.facts.vae_decoder, pipeline.facts.vae_encoder) == ("vae_decoder_tiny", "vae_encoder")
    assert Pipeline.load(copy, "cpu", vae="full").facts.vae_decoder == "vae_decoder"


def test_vae_tiny_without_a_tiny_decoder_is_a_one_line_error(tiny_vae_folder: Path, tmp_path: Path) -> None:
    copy = _copy_with_manifest(tiny_vae_folder, tmp_path / "copy", without="vae_decoder_tiny")
    result = _generate(copy, tmp_path / "out.png", "--vae", "tiny")
    assert result.exit_code != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "has no tiny VAE (vae_decoder_tiny)" in errors[0], result.output
    assert "Traceback" not in result.output
