"""AUTOMATIC1111's text-to-image and hires fix end to end, for tests/runtime/test_a1111_pictures.py, written
in torch from the web UI's behaviour (modules/sd_hijack_clip.py, sd_emphasis.py, rng.py, processing.py,
sd_samplers_kdiffusion.py) over PyTorch networks (Networks: diffusers' UNet and VAE with transformers' CLIP
for the tiny random model, sdexport's PyTorch modules for the embedded one), with k-diffusion's own samplers
and sigmas (a1111_reference, kdiffusion_reference), transformers' tokenizer and torch's CPU generator (the
web UI's "CPU" random source). Nothing of sdrun runs here.

Prompts arrive parsed into (text, weight) fragments, as the web UI's own parser gives them (recorded in
tests/runtime/data/a1111_prompts.json), so nothing here parses.
"""

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from a1111_reference import a1111_sigmas
from diffusers import StableDiffusionPipeline
from kdiffusion_reference import load
from PIL import Image
from transformers import CLIPTokenizer

from sdexport.models.stable_diffusion import StableDiffusion

CHUNK_TOKENS = 75
COMMA_BACKTRACK = 20
# sdrun row -> k-diffusion's function, for the samplers these tests run.
FUNCTIONS = {
    "k_euler": "sample_euler",
    "k_euler_a": "sample_euler_ancestral",
    "k_dpmpp_2m": "sample_dpmpp_2m",
}


@dataclass(frozen=True)
class Networks:
    """A model's PyTorch networks as the web UI calls them: token ids -> last hidden states, the UNet's eps
    (x, t, context), latents -> pixels in [-1, 1], and the VAE's latent scale."""

    tokenizer: CLIPTokenizer
    encode: Callable[[torch.Tensor], torch.Tensor]
    eps: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    decode: Callable[[torch.Tensor], torch.Tensor]
    latent_scale: float


def diffusers_networks(pipe: StableDiffusionPipeline) -> Networks:
    return Networks(
        pipe.tokenizer,
        lambda ids: pipe.text_encoder(ids)[0],
        lambda x, t, context: pipe.unet(x, t, context).sample,
        lambda latents: pipe.vae.decode(latents).sample,
        pipe.vae.config.scaling_factor,
    )


def sdexport_networks(model: StableDiffusion, tokenizer: CLIPTokenizer) -> Networks:
    """sdexport's PyTorch modules of a checkpoint (its own reading of the CompVis layout)."""
    return Networks(
        tokenizer,
        lambda ids: model.text_encoder(ids)[0],
        lambda x, t, context: model.unet(x, t, context),
        lambda latents: model.vae.decode(latents),
        model.config.vae.scaling_factor,
    )


def chunked_ids(
    tokenizer: CLIPTokenizer, fragments: Sequence[tuple[str, float]], backtrack: int = COMMA_BACKTRACK
) -> list[tuple[list[int], list[float]]]:
    """The web UI's tokenize_line: 75-token chunks (the words after a comma within `backtrack` tokens of a
    full chunk's end moved on, 0 turns that off; BREAK closes a chunk), each wrapped in start/end tokens and
    padded with the end token."""
    start, end = tokenizer.bos_token_id, tokenizer.eos_token_id
    comma = tokenizer.get_vocab()[",</w>"]
    chunks: list[tuple[list[int], list[float]]] = []
    tokens: list[int] = []
    weights: list[float] = []
    last_comma = -1

    def close() -> None:
        nonlocal tokens, weights, last_comma
        padding = CHUNK_TOKENS - len(tokens)
        chunks.append(([start, *tokens, *[end] * padding, end], [1.0, *weights, *[1.0] * padding, 1.0]))
        tokens, weights, last_comma = [], [], -1

    for text, weight in fragments:
        if text == "BREAK" and weight == -1:
            close()
            continue
        for token in tokenizer(text, truncation=False, add_special_tokens=False)["input_ids"]:
            if token == comma:
                last_comma = len(tokens)
            elif len(tokens) == CHUNK_TOKENS and 0 <= len(tokens) - last_comma <= backtrack:
                cut = last_comma + 1
                moved_tokens, moved_weights = tokens[cut:], weights[cut:]
                tokens, weights = tokens[:cut], weights[:cut]
                close()
                tokens, weights = moved_tokens, moved_weights
            if len(tokens) == CHUNK_TOKENS:
                close()
            tokens.append(token)
            weights.append(weight)
    if tokens or not chunks:
        close()
    return chunks


def conditioning(networks: Networks, fragments: Sequence[tuple[str, float]]) -> torch.Tensor:
    """[1, 77 * chunks, width]: each chunk's last hidden states, weighted and mean-restored per chunk (the
    web UI's "Original" emphasis), concatenated along the tokens."""
    states = []
    with torch.no_grad():
        for ids, weights in chunked_ids(networks.tokenizer, fragments):
            z = networks.encode(torch.tensor([ids]))
            mean = z.mean()
            z = z * torch.tensor(weights)[None, :, None]
            states.append(z * (mean / z.mean()))
    return torch.cat(states, dim=1)


class CpuSource:
    """The web UI's "CPU" random source for one image (rng.ImageRNG): the first draw from a generator of the
    seed; the later ones (the samplers' noise) from the same generator, or with an ENSD from a new one of
    seed + ENSD."""

    def __init__(self, seed: int, ensd: int = 0) -> None:
        self.seed, self.ensd = seed, ensd
        self.generator = torch.Generator().manual_seed(seed)
        self.first = True

    def next(self, shape: Sequence[int]) -> torch.Tensor:
        noise = torch.randn(tuple(shape), generator=self.generator)
        if self.first and self.ensd:
            self.generator = torch.Generator().manual_seed(self.seed + self.ensd)
        self.first = False
        return noise


def compvis_alphas_cumprod() -> torch.Tensor:
    """SD's training schedule as the CompVis checkpoint holds it: scaled-linear betas in float64, their
    cumulative product kept in float32."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, dim=0).float()


class GuidedUNet:
    """The CompVis model k-diffusion's CompVisDenoiser wraps: the UNet under classifier-free guidance; cond
    and uncond of different lengths run as two passes (the web UI's default, no Pad conds)."""

    def __init__(self, networks: Networks, cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> None:
        self.networks, self.cond, self.uncond, self.scale = networks, cond, uncond, scale
        self.alphas_cumprod = compvis_alphas_cumprod()

    def apply_model(self, x: torch.Tensor, t: torch.Tensor, cond: object = None) -> torch.Tensor:
        eps = self.networks.eps
        with torch.no_grad():
            if self.cond.shape == self.uncond.shape:
                both = eps(torch.cat([x, x]), torch.cat([t, t]), torch.cat([self.uncond, self.cond]))
                uncond, cond = both.chunk(2)
            else:
                uncond, cond = eps(x, t, self.uncond), eps(x, t, self.cond)
        return uncond + self.scale * (cond - uncond)


def sample(
    model: GuidedUNet,
    sampler: str,
    schedule_type: str | None,
    x: torch.Tensor,
    steps: int,
    source: CpuSource,
    *,
    strength: float | None = None,
) -> torch.Tensor:
    """The web UI's KDiffusionSampler.sample (x the first noise) or, with `strength`, its sample_img2img with
    the steps given (the hires pass: x the latents to start from); every later noise from `source`."""
    sampling, external = load()
    denoiser = external.CompVisDenoiser(model)
    if strength is None:
        sigmas = a1111_sigmas(denoiser, sampler, steps, schedule_type)
        start = x * sigmas[0]
    else:
        # setup_img2img_steps with the steps given: a schedule of steps / strength, of which the last run.
        total = int(steps / min(strength, 0.999))
        sigmas = a1111_sigmas(denoiser, sampler, total, schedule_type)[total - steps :]
        start = x + source.next(x.shape) * sigmas[0]
    function = getattr(sampling, FUNCTIONS[sampler])
    extra = {}
    if "noise_sampler" in inspect.signature(function).parameters:
        extra["noise_sampler"] = lambda sigma, sigma_next: source.next(x.shape)
    with torch.no_grad():
        return function(denoiser, start, sigmas, disable=True, **extra)


def decode(networks: Networks, latents: torch.Tensor) -> Image.Image:
    """The web UI's decode and conversion: clamped to [0, 1], times 255, truncated to 8 bits."""
    with torch.no_grad():
        pixels = networks.decode(latents / networks.latent_scale)
    pixels = torch.clamp((pixels[0] + 1.0) / 2.0, 0.0, 1.0)
    return Image.fromarray((255.0 * pixels.permute(1, 2, 0).numpy()).astype(np.uint8))
