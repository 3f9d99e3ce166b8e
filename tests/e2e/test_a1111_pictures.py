"""The issue's end-to-end promise: given the same weights and an AUTOMATIC1111 infotext, sdrun draws the
web UI's picture. The reference (tests/webui_pictures.py) is the web UI's algorithm in torch over PyTorch
networks of the same weights (diffusers' and transformers' for the tiny random model, sdexport's modules
for the embedded model), with k-diffusion's samplers and torch's CPU generator; sdrun runs the exported
folder from nothing but the infotext. Pictures agree within 2 levels mean absolute difference and the final
latents closely; the neighbours (the prompt read literally, sdrun's numpy source, no ENSD, Euler for
Euler a, the first chunk of a long prompt) miss the latents by far more."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from a1111_reference import run_a1111_ddim
from diffusers import StableDiffusionPipeline
from kdiffusion_reference import requires_kdiffusion
from PIL import Image
from transformers import CLIPTokenizer
from webui_pictures import (
    CpuSource,
    GuidedUNet,
    Networks,
    conditioning,
    decode,
    diffusers_networks,
    sample,
    sdexport_networks,
)

from sdexport import embedded
from sdexport.checkpoints.load import load_model
from sdrun.infotext import parse_parameters
from sdrun.pipeline import Pipeline
from sdrun.prompt_syntax import ExtraNetworkWarning
from sdrun.settings import GenerationSettings

pytestmark = requires_kdiffusion

MAX_MEAN_LEVELS = 2.0
LATENT_RTOL = 1e-4
# The trained embedded model's export is validated to a looser bound than the random one's.
EMBEDDED_LATENT_RTOL = 5e-4
PROMPT = "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky)))."
# A1111's own parse of PROMPT, recorded from its parser (tests/runtime/data/a1111_prompts.json).
PROMPT_FRAGMENTS = next(
    [(text, weight) for text, weight in row["emphasis"]]
    for row in json.loads((Path(__file__).parents[1] / "runtime/data/a1111_prompts.json").read_text())["rows"]
    if row["prompt"] == PROMPT
)
NEGATIVE = "low quality"
# 121 tokens: two chunks, against a negative prompt of one.
LONG_PROMPT = " ".join(f"a red cube number {n}," for n in range(20))
SEED = 1234
STEPS = 8
SCALE = 7.0


def _infotext(sampler: str, schedule: str = "Automatic", *, prompt: str = PROMPT, extra: str = "") -> str:
    return (
        f"{prompt}\nNegative prompt: {NEGATIVE}\n"
        f"Steps: {STEPS}, Sampler: {sampler}, Schedule type: {schedule}, CFG scale: {SCALE:g}, Seed: {SEED}, "
        f"Size: 64x64, RNG: CPU{extra}"
    )


@pytest.fixture(scope="module")
def random_model(tiny_diffusers_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Networks, Path]:
    """The tiny random model with a random bias in CLIP's final layer norm, for the reference and as our
    build. Left at zero, every token's hidden state has mean zero, and the "Original" emphasis (which divides
    by the mean) would divide rounding noise by rounding noise."""
    folder = tmp_path_factory.mktemp("webui-diffusers") / "model"
    shutil.copytree(tiny_diffusers_dir, folder)
    pipe = StableDiffusionPipeline.from_pretrained(folder).to(torch.float32)
    with torch.no_grad():
        norm = pipe.text_encoder.text_model.final_layer_norm
        norm.bias.copy_(torch.randn(norm.bias.shape, generator=torch.Generator().manual_seed(5)))
    pipe.text_encoder.save_pretrained(folder / "text_encoder")
    out = tmp_path_factory.mktemp("webui-sdexport") / "model"
    build = "from sdexport.cli import main; main()"
    command = [sys.executable, "-c", build, "build", str(folder), "--output", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return diffusers_networks(pipe), out


@pytest.fixture(scope="module")
def reference(random_model: tuple[Networks, Path]) -> Networks:
    return random_model[0]


@pytest.fixture(scope="module")
def sdrun_pipeline(random_model: tuple[Networks, Path]) -> Pipeline:
    return Pipeline.load(random_model[1], provider="cpu")


def _sdrun(pipeline: Pipeline, text: str, **changes: object) -> tuple[Image.Image, np.ndarray]:
    """sdrun's picture for the infotext (with `changes`), and its final latents."""
    latents: list[np.ndarray] = []

    def keep(step: int, total: int, x: np.ndarray) -> bool:
        latents.append(x)
        return False

    settings = GenerationSettings.from_image(parse_parameters(text), **changes)
    return pipeline.generate(settings, callback=keep).images[0], latents[-1]


def _webui(
    networks: Networks,
    sampler: str,
    schedule_type: str | None = None,
    *,
    ensd: int = 0,
    fragments: list[tuple[str, float]] = PROMPT_FRAGMENTS,
    hires: tuple[int, float] | None = None,
) -> tuple[Image.Image, torch.Tensor]:
    """The web UI's 64x64 picture: its conditioning, CPU draws and k-diffusion sampler; with `hires` (steps,
    denoising strength), its hires fix with the Latent upscaler at 2x."""
    cond = conditioning(networks, fragments)
    model = GuidedUNet(networks, cond, conditioning(networks, [(NEGATIVE, 1.0)]), SCALE)
    source = CpuSource(SEED, ensd)
    latents = sample(model, sampler, schedule_type, source.next((1, 4, 8, 8)), STEPS, source)
    if hires is not None:
        steps, strength = hires
        upscaled = torch.nn.functional.interpolate(latents, size=(16, 16), mode="bilinear", antialias=False)
        again = CpuSource(SEED, ensd)  # the second pass's fresh ImageRNG for the seed at the new size
        latents = sample(model, sampler, schedule_type, upscaled, steps, again, strength=strength)
    return decode(networks, latents), latents


def _mean_levels(ours: Image.Image, theirs: Image.Image) -> float:
    return float(np.abs(np.asarray(ours, np.float64) - np.asarray(theirs, np.float64)).mean())


def _relative_l2(ours: np.ndarray, theirs: torch.Tensor) -> float:
    return float(np.linalg.norm(ours - theirs.numpy()) / np.linalg.norm(theirs.numpy()))


def _agree(
    ours: tuple[Image.Image, np.ndarray], theirs: tuple[Image.Image, torch.Tensor], rtol: float = LATENT_RTOL
) -> None:
    assert ours[0].size == theirs[0].size
    assert _mean_levels(ours[0], theirs[0]) <= MAX_MEAN_LEVELS
    assert _relative_l2(ours[1], theirs[1]) < rtol


@pytest.mark.parametrize(
    "label, schedule, sampler, schedule_type",
    [
        ("Euler a", "Automatic", "k_euler_a", None),
        ("Euler", "Automatic", "k_euler", None),
        ("DPM++ 2M", "Karras", "k_dpmpp_2m", "Karras"),
        ("DPM++ 2M Karras", "Automatic", "k_dpmpp_2m", "Karras"),  # the label before web UI 1.9
    ],
)
def test_k_diffusion_samplers_draw_the_web_uis_picture(
    reference, sdrun_pipeline: Pipeline, label: str, schedule: str, sampler: str, schedule_type: str | None
) -> None:
    _agree(_sdrun(sdrun_pipeline, _infotext(label, schedule)), _webui(reference, sampler, schedule_type))


def test_ddim_draws_the_web_uis_picture(reference, sdrun_pipeline: Pipeline) -> None:
    """The web UI's own DDIM (its timesteps sampler, not k-diffusion's): 7 model calls at 8 steps, ending at
    t = 1, a draw every step at eta 0 too."""
    cond = conditioning(reference, PROMPT_FRAGMENTS)
    model = GuidedUNet(reference, cond, conditioning(reference, [(NEGATIVE, 1.0)]), SCALE)
    source = CpuSource(SEED)
    noise = source.next((1, 4, 8, 8)).numpy()
    run = run_a1111_ddim(model, "epsilon", STEPS, noise, lambda x: source.next(x.shape))
    final = torch.from_numpy(run[-1])
    ours = _sdrun(sdrun_pipeline, _infotext("DDIM"))
    _agree(ours, (decode(reference, final), final))
    # diffusers' DDIM has the same timesteps at 8 steps but one more step, to the end of the schedule.
    diffusers_ddim = _sdrun(sdrun_pipeline, _infotext("DDIM"), sampler="ddim")
    assert _relative_l2(diffusers_ddim[1], final) > 5 * LATENT_RTOL


def test_ensd_reseeds_the_later_draws(reference, sdrun_pipeline: Pipeline) -> None:
    ours = _sdrun(sdrun_pipeline, _infotext("Euler a", extra=", ENSD: 31337"))
    _agree(ours, _webui(reference, "k_euler_a", ensd=31337))
    assert _relative_l2(ours[1], _webui(reference, "k_euler_a")[1]) > 100 * LATENT_RTOL


def test_a_long_prompt_runs_in_chunks_beside_a_short_negative(reference, sdrun_pipeline: Pipeline) -> None:
    """A two-chunk prompt beside a one-chunk negative prompt: two UNet passes of their own lengths."""
    ours = _sdrun(sdrun_pipeline, _infotext("Euler", prompt=LONG_PROMPT))
    _agree(ours, _webui(reference, "k_euler", fragments=[(LONG_PROMPT, 1.0)]))
    first_chunk = _sdrun(sdrun_pipeline, _infotext("Euler", prompt=LONG_PROMPT[: len(LONG_PROMPT) // 2]))
    assert _relative_l2(first_chunk[1], torch.from_numpy(ours[1])) > 100 * LATENT_RTOL


def test_hires_fix_with_a_latent_upscaler(reference, sdrun_pipeline: Pipeline) -> None:
    hires = ", Denoising strength: 0.6, Hires upscale: 2, Hires steps: 4, Hires upscaler: Latent"
    ours = _sdrun(sdrun_pipeline, _infotext("Euler a", extra=hires))
    assert ours[0].size == (128, 128)
    _agree(ours, _webui(reference, "k_euler_a", hires=(4, 0.6)))


def test_extra_network_tags_leave_the_prompt_and_are_named(reference, sdrun_pipeline: Pipeline) -> None:
    """The web UI takes "<lora:...>" tags out of the prompt before reading it; sdrun does too, and says in
    one warning that the LoRA is not applied."""
    with pytest.warns(ExtraNetworkWarning, match="inkpunk"):
        ours = _sdrun(sdrun_pipeline, _infotext("Euler", prompt=f"{PROMPT} <lora:inkpunk_v2:0.8>"))
    _agree(ours, _webui(reference, "k_euler"))


def test_the_neighbours_miss_by_far_more(reference, sdrun_pipeline: Pipeline) -> None:
    """The power of the checks above: the prompt read literally (emphasis None), sdrun's numpy source and
    Euler for Euler a each move the latents far beyond the tolerance."""
    theirs = _webui(reference, "k_euler_a")
    text = _infotext("Euler a")
    literal = _sdrun(sdrun_pipeline, text, emphasis="None")
    numpy_source = _sdrun(sdrun_pipeline, text.replace("RNG: CPU", "RNG: numpy"))
    euler = _sdrun(sdrun_pipeline, _infotext("Euler"))
    for neighbour in (literal, numpy_source, euler):
        assert _relative_l2(neighbour[1], theirs[1]) > 100 * LATENT_RTOL


@pytest.fixture(scope="module")
def embedded_reference(tiny_folder: Path) -> Networks:
    """The embedded model as sdexport's PyTorch modules read its checkpoint, with the tokenizer its build
    wrote (transformers' CLIPTokenizer)."""
    model = load_model(embedded.CHECKPOINT).model
    return sdexport_networks(model, CLIPTokenizer.from_pretrained(tiny_folder / "tokenizer"))


def test_the_embedded_model_draws_the_web_uis_picture(embedded_reference: Networks, tiny_pipeline) -> None:
    """A trained model, whose pictures are shapes rather than noise: Euler a with ENSD, then a hires fix;
    the numpy source draws another picture, far beyond the tolerance in levels too."""
    text = _infotext("Euler a", extra=", ENSD: 31337")
    ours = _sdrun(tiny_pipeline, text)
    _agree(ours, _webui(embedded_reference, "k_euler_a", ensd=31337), EMBEDDED_LATENT_RTOL)
    assert _mean_levels(_sdrun(tiny_pipeline, text.replace("RNG: CPU", "RNG: numpy"))[0], ours[0]) > 10
    hires = ", Denoising strength: 0.5, Hires upscale: 2, Hires steps: 4, Hires upscaler: Latent"
    theirs = _webui(embedded_reference, "k_euler_a", ensd=31337, hires=(4, 0.5))
    _agree(_sdrun(tiny_pipeline, text + hires), theirs, EMBEDDED_LATENT_RTOL)
