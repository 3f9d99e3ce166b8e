"""The emphasis and pad_conds settings through the pipeline, the infotext and the settings checks, and what
long and weighted prompts do to the picture (sdrun.text_conditioning)."""

from pathlib import Path

import numpy as np
import pytest

from sdrun.errors import SettingsError
from sdrun.folder_layout import TEXT_ENCODER
from sdrun.infotext import format_parameters, parse_parameters
from sdrun.networks import TextEncoderGraph
from sdrun.pipeline import Pipeline
from sdrun.settings import GenerationSettings, ImageSettings

WORDS = "red blue green cube ball cat dog tree house car sky sea sun moon star road".split()
LONG = " ".join(WORDS[index % len(WORDS)] for index in range(100))
FIRST_75 = " ".join(LONG.split()[:75])
PICTURE = {"steps": 4, "seed": 3, "width": 64, "height": 64, "sampler": "euler", "guidance_scale": 7.5}


@pytest.fixture(scope="module")
def pipeline(tiny_sdexport_dir: Path) -> Pipeline:
    return Pipeline.load(tiny_sdexport_dir, provider="cpu")


def _picture(pipeline: Pipeline, prompt: str, **fields: object) -> np.ndarray:
    return np.asarray(pipeline.generate(prompt, **{**PICTURE, **fields}).images[0], dtype=np.int16)


def test_short_unweighted_prompts_encode_as_before(pipeline: Pipeline) -> None:
    """Without weights, a prompt of up to 75 tokens is bit for bit the text encoder's 77-token output."""
    prompt, negative = FIRST_75, "blurry, (low quality)"
    encoder = pipeline._network(TEXT_ENCODER, TextEncoderGraph)
    before = encoder.encode(pipeline.tokenizer.encode([prompt, "blurry, low quality"]))
    for emphasis in ("Original", "No norm", "Ignore"):
        # "(low quality)" is weighted, but its brackets are not tokens: Ignore reads the same tokens.
        embeddings = pipeline.encode_prompt(prompt, negative, 7.5, emphasis=emphasis)
        assert np.array_equal(embeddings.conditional, before[:1])
    ignored = pipeline.encode_prompt(prompt, negative, 7.5, emphasis="Ignore")
    assert np.array_equal(ignored.unconditional, before[1:])


def test_a_long_prompt_is_not_cut(pipeline: Pipeline) -> None:
    """A 100-token prompt draws another picture than its first 75 tokens (which sdrun used to keep)."""
    assert len(pipeline.tokenizer.words([LONG])[0]) == 100
    long, cut = _picture(pipeline, LONG), _picture(pipeline, FIRST_75)
    assert np.abs(long - cut).max() > 8


def test_weights_change_the_picture(pipeline: Pipeline) -> None:
    """The tiny model draws the same settings to the same bits, so any difference is the weight's (the
    weight of one token in 77 moves its 64x64 picture by a few levels)."""
    plain = _picture(pipeline, "a red cube")
    assert np.array_equal(plain, _picture(pipeline, "a red cube"))
    for emphasis in ("Original", "No norm"):
        assert np.abs(plain - _picture(pipeline, "a (red:1.5) cube", emphasis=emphasis)).max() > 0
    # Emphasis None reads the brackets as text, "Ignore" drops the weight and keeps the words.
    assert np.array_equal(_picture(pipeline, "a (red:1.5) cube", emphasis="Ignore"), plain)
    assert np.abs(_picture(pipeline, "a (red:1.5) cube", emphasis="None") - plain).max() > 0


def test_pad_conds_pads_the_shorter_prompt(pipeline: Pipeline) -> None:
    """Separate passes (the default) and padding with the empty prompt give different pictures for a
    negative prompt longer than the prompt, and the same when both have one chunk."""
    negative = LONG
    apart = _picture(pipeline, "a red cube", negative_prompt=negative)
    padded = _picture(pipeline, "a red cube", negative_prompt=negative, pad_conds=True)
    assert np.abs(apart - padded).max() > 0
    short = {"negative_prompt": "blurry"}
    same = _picture(pipeline, "a red cube", **short)
    assert np.array_equal(same, _picture(pipeline, "a red cube", pad_conds=True, **short))


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"emphasis": "original"}, "emphasis 'original' is unknown: give one of Original, No norm"),
        ({"emphasis": 1}, "emphasis 1 is unknown"),
        ({"pad_conds": "yes"}, "pad_conds must be True or False"),
    ],
)
def test_bad_settings_are_refused(pipeline: Pipeline, fields: dict, problem: str) -> None:
    with pytest.raises(SettingsError, match=problem):
        pipeline.prepare("a cube", **fields)


def test_the_infotext_records_them_as_the_web_ui_does() -> None:
    base = ImageSettings("a (red) cube", "", 20, "euler_a", 7.0, 1, 512, 512)
    assert "Emphasis" not in format_parameters(base) and "Pad conds" not in format_parameters(base)
    changed = ImageSettings(**{**base.__dict__, "emphasis": "No norm", "pad_conds": True})
    line = format_parameters(changed).splitlines()[-1]
    assert "RNG: numpy, Emphasis: No norm, Pad conds: True, " in line
    assert parse_parameters(format_parameters(changed)) == changed
    # The web UI writes Emphasis only when a prompt has brackets (weights change nothing else).
    plain = ImageSettings(**{**changed.__dict__, "prompt": "a red cube"})
    assert "Emphasis" not in format_parameters(plain)
    web_ui = (
        "a (cube)\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 512x512, Emphasis: None, "
        "Pad conds: True, Version: v1.10.1"
    )
    read = parse_parameters(web_ui)
    assert (read.emphasis, read.pad_conds) == ("None", True)
    assert GenerationSettings.from_image(read).emphasis == "None"


def test_the_cli_options_reach_the_png_and_come_back(tiny_sdexport_dir: Path, tmp_path: Path) -> None:
    from cli_runs import png_parameters, png_pixels, run_cli

    first, again = tmp_path / "first.png", tmp_path / "again.png"
    fast = ("--steps", 2, "--width", 64, "--height", 64, "--seed", 4)
    options = ("--emphasis", "No norm", "--pad-conds", "--negative", LONG, *fast)
    made = run_cli("a (red:1.4) cube", "--model", tiny_sdexport_dir, "--out", first, *options)
    assert made.exit_code == 0, made.output
    settings = parse_parameters(png_parameters(first))
    assert (settings.emphasis, settings.pad_conds) == ("No norm", True)
    assert run_cli("--from-png", first, "--model", tiny_sdexport_dir, "--out", again).exit_code == 0
    assert np.array_equal(png_pixels(first), png_pixels(again))
