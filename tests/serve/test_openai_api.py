"""The official `openai` client against a live `sdrun serve`: generations, edits (with OpenAI's masks too)
and models, in OpenAI's JSON shapes; the same seed gives the same pixels through this API, the CLI and the
library."""

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageOps
from serve_helpers import (
    LEFT,
    PROMPT,
    RIGHT,
    SIDE,
    assert_repainted_only,
    decode,
    init_image,
    left_half_mask,
    png_bytes,
    png_parameters,
)

from sdrun.cli import main as sdrun_main
from sdrun.infotext import parse_parameters
from sdrun.pipeline import Pipeline
from sdrun.settings import HiresFix

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def client(server_url: str) -> "openai.OpenAI":
    return openai.OpenAI(base_url=f"{server_url}/v1", api_key="unused", max_retries=0, timeout=60)


def test_same_seed_same_pixels_through_the_api_the_cli_and_the_library(
    client: "openai.OpenAI", served_folder: Path, reference: Pipeline, tmp_path: Path
) -> None:
    # Nothing but the prompt and the seed: every other setting is the model folder's default.
    answer = client.images.generate(prompt=PROMPT, extra_body={"seed": 7})
    through_api = decode(answer.data[0].b64_json)

    out = tmp_path / "cli.png"
    result = CliRunner().invoke(
        sdrun_main, [PROMPT, "--model", str(served_folder), "--seed", "7", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    with Image.open(out) as image:
        through_cli = np.asarray(image.convert("RGB"))
    through_library = np.asarray(reference.generate(PROMPT, seed=7).images[0])

    np.testing.assert_array_equal(through_api, through_library)
    np.testing.assert_array_equal(through_cli, through_library)
    other_seed = decode(client.images.generate(prompt=PROMPT, extra_body={"seed": 8}).data[0].b64_json)
    assert np.abs(other_seed.astype(int) - through_library).mean() > 1


def test_generate_takes_n_size_and_our_settings(
    client: "openai.OpenAI", library_pixels: Callable[..., np.ndarray]
) -> None:
    answer = client.images.generate(
        prompt=PROMPT,
        n=2,
        size="64x64",
        response_format="b64_json",
        extra_body={"seed": 30, "steps": 3, "guidance_scale": 3.0, "sampler": "DPM++ 2M Karras"},
    )
    assert answer.created > 0 and len(answer.data) == 2
    for index, image in enumerate(answer.data):
        settings = parse_parameters(png_parameters(image.b64_json))
        # A1111's label (its older one, with the schedule type in it) runs A1111's own DPM++ 2M Karras.
        assert (settings.seed, settings.steps, settings.sampler, settings.schedule_type) == (
            30 + index,
            3,
            "k_dpmpp_2m",
            "Karras",
        )
        expected = library_pixels(
            30 + index, steps=3, guidance_scale=3.0, sampler="k_dpmpp_2m", schedule_type="Karras"
        )
        np.testing.assert_array_equal(decode(image.b64_json), expected)


def test_edit_is_image_to_image(client: "openai.OpenAI", reference: Pipeline) -> None:
    start = init_image()
    answer = client.images.edit(
        image=("start.png", png_bytes(start), "image/png"),
        prompt=PROMPT,
        extra_body={"seed": 5, "steps": 4, "strength": 0.5},
    )
    expected = reference.generate(PROMPT, seed=5, steps=4, strength=0.5, init_image=start).images[0]
    np.testing.assert_array_equal(decode(answer.data[0].b64_json), np.asarray(expected))
    assert parse_parameters(png_parameters(answer.data[0].b64_json)).strength == 0.5


def test_edit_repaints_where_the_mask_is_transparent(client: "openai.OpenAI", reference: Pipeline) -> None:
    """OpenAI's polarity: transparent (alpha 0) = edit. White and opaque would mean the opposite to the
    library's reading (A1111's), so the mask is white all over and transparent on the left only."""
    start, repaint = init_image(), left_half_mask()
    mask = Image.new("RGBA", (SIDE, SIDE), (255, 255, 255, 255))
    mask.putalpha(ImageOps.invert(repaint))
    settings = {"seed": 6, "steps": 4, "strength": 0.6, "mask_blur": 0}
    answer = client.images.edit(
        image=("start.png", png_bytes(start), "image/png"),
        mask=("mask.png", png_bytes(mask), "image/png"),
        prompt=PROMPT,
        extra_body=settings,
    )
    made = decode(answer.data[0].b64_json)
    assert_repainted_only(made, start, repainted=LEFT, kept=RIGHT)
    expected = reference.generate(PROMPT, init_image=start, mask=repaint, **settings).images[0]
    np.testing.assert_array_equal(made, np.asarray(expected))
    assert parse_parameters(png_parameters(answer.data[0].b64_json)).mask_blur == 0


def test_url_responses_are_refused_in_openais_error_shape(client: "openai.OpenAI") -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.images.generate(prompt=PROMPT, response_format="url")
    assert refused.value.status_code == 400
    error = refused.value.body
    assert set(error) == {"message", "type", "param", "code"} and "b64_json" in error["message"]


def test_models_lists_the_served_folder(client: "openai.OpenAI", served_folder: Path) -> None:
    assert [model.id for model in client.models.list()] == [served_folder.name]
    with pytest.raises(openai.BadRequestError, match="not served here"):
        client.images.generate(prompt=PROMPT, model="dall-e-3")


def test_generate_takes_a_hires_fix(client: "openai.OpenAI", reference: Pipeline) -> None:
    """Ours: `hires` in extra_body is the library's HiresFix; the image comes at the target size."""
    hires = {"scale": 2, "steps": 2, "strength": 0.5, "upscaler": "Latent (bicubic)", "sampler": "Euler"}
    answer = client.images.generate(
        prompt=PROMPT,
        size="64x64",
        response_format="b64_json",
        extra_body={"seed": 4, "steps": 3, "sampler": "euler", "hires": hires},
    )
    (image,) = answer.data
    fix = HiresFix(scale=2.0, steps=2, strength=0.5, upscaler="Latent (bicubic)", sampler="k_euler")
    expected = reference.generate(PROMPT, seed=4, steps=3, sampler="euler", hires=fix).images[0]
    assert decode(image.b64_json).shape == (128, 128, 3)
    np.testing.assert_array_equal(decode(image.b64_json), np.asarray(expected))
    assert parse_parameters(png_parameters(image.b64_json)).hires is not None
