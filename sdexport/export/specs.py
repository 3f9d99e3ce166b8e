"""The component table: what each exported graph takes and returns, how to make inputs for it, and how
closely it must agree with PyTorch (the idea of optimum's OnnxConfig).

The exporter, the validator and the manifest all read this one table. Names, dtypes and dynamic axes are
those of the Hugging Face ONNX exports, so optimum's pipeline runs our folders and sdrun runs theirs. A
named (string) axis is dynamic; an integer is fixed. Sizes are given in latent pixels; the VAE's image
side is `factor` times that.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from sdexport.checkpoints.diffusers_configs import (
    text_encoder_config_to_diffusers,
    unet_config_to_diffusers,
    vae_config_to_diffusers,
)
from sdexport.checkpoints.taesd_files import taesd_config_to_diffusers
from sdexport.models import StableDiffusion, StableDiffusionConfig
from sdexport.models.taesd import TAESD
from sdrun.folder_layout import (
    TEXT_ENCODER,
    TINY_VAE_DECODER,
    TINY_VAE_ENCODER,
    UNET,
    VAE_DECODER,
    VAE_ENCODER,
)
from sdrun.guidance_embedding import GUIDANCE_INPUT, guidance_scale_embedding


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy's name: "float32", "int64"
    shape: tuple[int | str, ...]

    @property
    def dynamic_axes(self) -> dict[int, str]:
        return {axis: dim for axis, dim in enumerate(self.shape) if isinstance(dim, str)}


@dataclass(frozen=True)
class Sizes:
    """One input shape: batch and latent height/width (the image is 8x larger for SD 1.x)."""

    batch: int
    height: int
    width: int


@dataclass(frozen=True)
class Tolerance:
    """A graph output passes when max|onnx - torch| <= atol + rtol * max|torch|."""

    atol: float
    rtol: float

    def limit(self, reference_peak: float) -> float:
        return self.atol + self.rtol * reference_peak


@dataclass(frozen=True)
class ComponentSpec:
    name: str  # also the folder's subfolder
    inputs: Callable[[StableDiffusionConfig], tuple[TensorSpec, ...]]
    outputs: tuple[str, ...]
    wrap: Callable[[StableDiffusion], nn.Module]
    make_inputs: Callable[[StableDiffusionConfig, Sizes, torch.Generator], dict[str, Tensor]]
    diffusers_config: Callable[[StableDiffusionConfig], dict]
    # By the precisions this graph is built in (fp32, fp16, int8); it stays fp32 when others are asked.
    tolerances: dict[str, Tolerance]


# The example for tracing: batch 2 and a non-square size, so no dimension specializes to 1 or to another.
EXPORT_SIZES = Sizes(batch=2, height=8, width=12)
# Fresh inputs for validation: batch 1 and 2, square and not, and a latent side that the UNet's three
# halvings do not divide (its upsamplings must then match the skip connections' odd sizes).
VALIDATION_SIZES = (Sizes(1, 8, 8), Sizes(2, 6, 10), Sizes(1, 9, 13))
# Latent sides the UNet graph takes: any (its upsamplings resize to their skip connections), which the
# odd size above checks at every build.
LATENT_SIZE_MULTIPLE = 1


def vae_factor(config: StableDiffusionConfig) -> int:
    """Image pixels per latent pixel: one halving per VAE level but the last."""
    return 2 ** (len(config.vae.ch_mult) - 1)


class TextEncoderGraph(nn.Module):
    def __init__(self, model: StableDiffusion):
        super().__init__()
        self.text_encoder = model.text_encoder

    def forward(self, input_ids: Tensor) -> tuple[Tensor, Tensor]:
        return self.text_encoder(input_ids)


class UNetGraph(nn.Module):
    def __init__(self, model: StableDiffusion):
        super().__init__()
        self.unet = model.unet

    def forward(
        self,
        sample: Tensor,
        timestep: Tensor,
        encoder_hidden_states: Tensor,
        timestep_cond: Tensor | None = None,
    ) -> Tensor:
        return self.unet(sample, timestep, encoder_hidden_states, timestep_cond)


class VAEEncoderGraph(nn.Module):
    """Image in [-1, 1] -> mean and log-variance; the caller samples the latent with its own generator."""

    def __init__(self, model: StableDiffusion):
        super().__init__()
        self.vae = model.vae

    def forward(self, sample: Tensor) -> Tensor:
        return self.vae.encode(sample)


class VAEDecoderGraph(nn.Module):
    """Latent already divided by the scaling factor -> image in about [-1, 1]."""

    def __init__(self, model: StableDiffusion):
        super().__init__()
        self.vae = model.vae

    def forward(self, latent_sample: Tensor) -> Tensor:
        return self.vae.decode(latent_sample)


class TinyVAEDecoderGraph(nn.Module):
    """vae_decoder's contract on TAESD: the latent already divided by the full VAE's scaling factor ->
    image in about [-1, 1]. TAESD decodes the diffusion model's latents (times the factor) to [0, 1]."""

    def __init__(self, taesd: TAESD, scaling_factor: float):
        super().__init__()
        self.decoder = taesd.decoder
        self.scaling_factor = scaling_factor

    def forward(self, latent_sample: Tensor) -> Tensor:
        return self.decoder(latent_sample * self.scaling_factor) * 2 - 1


class TinyVAEEncoderGraph(nn.Module):
    """Image in [-1, 1] -> the latent in vae_decoder's units (divided by the scaling factor). TAESD's
    encoder takes [0, 1] and gives the diffusion model's latents: one point, not a distribution."""

    def __init__(self, taesd: TAESD, scaling_factor: float):
        super().__init__()
        self.encoder = taesd.encoder
        self.scaling_factor = scaling_factor

    def forward(self, sample: Tensor) -> Tensor:
        return self.encoder((sample + 1) / 2) / self.scaling_factor


def _text_encoder_inputs(config: StableDiffusionConfig) -> tuple[TensorSpec, ...]:
    return (TensorSpec("input_ids", "int64", ("batch", config.text_encoder.max_position_embeddings)),)


def _prompt_ids(config: StableDiffusionConfig, sizes: Sizes, generator: torch.Generator) -> dict[str, Tensor]:
    """Token ids shaped like a tokenized prompt: start token, words, end token, end-token padding."""
    vocab = config.text_encoder.vocab_size
    length = config.text_encoder.max_position_embeddings
    start, end = vocab - 2, vocab - 1  # CLIP's <|startoftext|> and <|endoftext|> close the vocabulary
    ids = torch.randint(0, vocab - 2, (sizes.batch, length), generator=generator)
    ids[:, 0] = start
    for row in ids:
        words = int(torch.randint(1, length - 1, (), generator=generator))
        row[1 + words :] = end
    return {"input_ids": ids}


def _unet_inputs(config: StableDiffusionConfig) -> tuple[TensorSpec, ...]:
    c = config.unet
    inputs = (
        TensorSpec("sample", "float32", ("batch", c.in_channels, "height", "width")),
        # A scalar, as optimum exports it; every image of the batch is at the same step.
        TensorSpec("timestep", "float32", ()),
        TensorSpec("encoder_hidden_states", "float32", ("batch", "sequence", c.context_dim)),
    )
    if not c.time_cond_proj_dim:
        return inputs
    # An LCM UNet's guidance-scale embedding, one row per image (sdrun.guidance_embedding).
    return (*inputs, TensorSpec(GUIDANCE_INPUT, "float32", ("batch", c.time_cond_proj_dim)))


def _unet_example(
    config: StableDiffusionConfig, sizes: Sizes, generator: torch.Generator
) -> dict[str, Tensor]:
    c = config.unet
    length = config.text_encoder.max_position_embeddings
    timestep = torch.randint(0, config.num_train_timesteps, (), generator=generator).float()
    inputs = {
        "sample": torch.randn(sizes.batch, c.in_channels, sizes.height, sizes.width, generator=generator),
        "timestep": timestep,
        "encoder_hidden_states": torch.randn(sizes.batch, length, c.context_dim, generator=generator),
    }
    if c.time_cond_proj_dim:
        # The embedding of a guidance scale as people set it (1 to 15), as sdrun computes it.
        scale = 1 + 14 * float(torch.rand((), generator=generator))
        embedding = guidance_scale_embedding(scale, sizes.batch, c.time_cond_proj_dim)
        inputs[GUIDANCE_INPUT] = torch.from_numpy(embedding)
    return inputs


def _vae_encoder_inputs(config: StableDiffusionConfig) -> tuple[TensorSpec, ...]:
    dims = ("batch", config.vae.in_channels, "image_height", "image_width")
    return (TensorSpec("sample", "float32", dims),)


def _image(config: StableDiffusionConfig, sizes: Sizes, generator: torch.Generator) -> dict[str, Tensor]:
    f = vae_factor(config)
    shape = (sizes.batch, config.vae.in_channels, sizes.height * f, sizes.width * f)
    return {"sample": torch.rand(shape, generator=generator) * 2 - 1}


def _vae_decoder_inputs(config: StableDiffusionConfig) -> tuple[TensorSpec, ...]:
    dims = ("batch", config.vae.embed_dim, "latent_height", "latent_width")
    return (TensorSpec("latent_sample", "float32", dims),)


def _latent(config: StableDiffusionConfig, sizes: Sizes, generator: torch.Generator) -> dict[str, Tensor]:
    shape = (sizes.batch, config.vae.embed_dim, sizes.height, sizes.width)
    return {"latent_sample": torch.randn(shape, generator=generator)}


# Largest errors measured on random weights (tiny config and full SD 1.5), against these bounds:
# fp32 1e-6 to 6e-6 (summation order only), bound >= 1e-4; fp16 2e-3 to 7e-3, bound >= 4e-2.
# Each leaves ~10x or more headroom over the measured noise; a wrong graph (one weight tensor 1% off,
# tests/export) lands ~70x past fp32's.
# int8 (dynamic int8 weights of the matrix products; int8-compact also the convolutions'), measured
# 2026-12-07 as max|error| / max|reference| over the validation checks: text encoder 4% on the tests' tiny
# model, 1.5% on the embedded one, 1.1% on full SD 1.5 (random weights): 0.35 of its bound or less; UNet
# 0.6% (1.3% int8-compact) on the tiny model, 0.5% (0.9%) on the embedded one, 0.9% (1.6%) on full SD 1.5:
# a third of its tighter bound or less. What each bound catches: tests/export/test_precision.py.
_FP32 = Tolerance(atol=1e-4, rtol=1e-4)
_FP16 = Tolerance(atol=2e-2, rtol=2e-2)
_INT8_TEXT_ENCODER = Tolerance(atol=5e-2, rtol=1e-1)
_INT8_UNET = Tolerance(atol=2e-2, rtol=3e-2)

def _vae_diffusers_config(config: StableDiffusionConfig) -> dict[str, Any]:
    return vae_config_to_diffusers(config.vae, config.sample_size * config.vae.downsampling)


COMPONENTS: tuple[ComponentSpec, ...] = (
    ComponentSpec(
        name=TEXT_ENCODER,
        inputs=_text_encoder_inputs,
        outputs=("last_hidden_state", "pooler_output"),
        wrap=TextEncoderGraph,
        make_inputs=_prompt_ids,
        diffusers_config=lambda config: text_encoder_config_to_diffusers(config.text_encoder),
        tolerances={"fp32": _FP32, "fp16": _FP16, "int8": _INT8_TEXT_ENCODER},
    ),
    ComponentSpec(
        name=UNET,
        inputs=_unet_inputs,
        outputs=("out_sample",),
        wrap=UNetGraph,
        make_inputs=_unet_example,
        diffusers_config=lambda config: unet_config_to_diffusers(config.unet, config.sample_size),
        tolerances={"fp32": _FP32, "fp16": _FP16, "int8": _INT8_UNET},
    ),
    ComponentSpec(
        name=VAE_ENCODER,
        inputs=_vae_encoder_inputs,
        outputs=("latent_parameters",),
        wrap=VAEEncoderGraph,
        make_inputs=_image,
        diffusers_config=_vae_diffusers_config,
        # Always float32. fp16: its activations reach the thousands in the mid block, and it is a small
        # share of a generation's time next to the UNet's steps. int8: its only matrix products are
        # activation by activation (attention); its projections are 1x1 convolutions.
        tolerances={"fp32": _FP32},
    ),
    ComponentSpec(
        name=VAE_DECODER,
        inputs=_vae_decoder_inputs,
        outputs=("sample",),
        wrap=VAEDecoderGraph,
        make_inputs=_latent,
        diffusers_config=_vae_diffusers_config,
        tolerances={"fp32": _FP32},
    ),
)


# What a tiny VAE graph's config.json says about its inputs and outputs (key "sdexport_graph_io").
TINY_VAE_GRAPH_IO = (
    "TAESD (madebyollin/taesd) under the full VAE's contract: latent_sample is the diffusion model's latent "
    "divided by scaling_factor, as vae_decoder takes it, and images are in [-1, 1]; TAESD's own latents "
    "(times scaling_factor) and [0, 1] pixels are converted inside the graph"
)


def tiny_vae_components(taesd: TAESD) -> tuple[ComponentSpec, ...]:
    """The specs of `taesd`'s graphs, beside the full VAE's: its decoder, and its encoder when it has one.
    They take and give what vae_decoder and (for the latent mean) vae_encoder do, so the runtime treats
    the two VAEs alike; their config.json carries the full VAE's scaling_factor for the same reason."""

    def diffusers_config(config: StableDiffusionConfig) -> dict[str, Any]:
        tiny = taesd_config_to_diffusers(taesd.config)
        return {**tiny, "scaling_factor": config.vae.scaling_factor, "sdexport_graph_io": TINY_VAE_GRAPH_IO}

    decoder = ComponentSpec(
        name=TINY_VAE_DECODER,
        inputs=_vae_decoder_inputs,
        outputs=("sample",),
        wrap=lambda model: TinyVAEDecoderGraph(taesd, model.config.vae.scaling_factor),
        make_inputs=_latent,
        diffusers_config=diffusers_config,
        tolerances={"fp32": _FP32},
    )
    encoder = ComponentSpec(
        name=TINY_VAE_ENCODER,
        inputs=_vae_encoder_inputs,
        outputs=("latent_sample",),
        wrap=lambda model: TinyVAEEncoderGraph(taesd, model.config.vae.scaling_factor),
        make_inputs=_image,
        diffusers_config=diffusers_config,
        tolerances={"fp32": _FP32},
    )
    return (decoder, encoder) if taesd.encoder is not None else (decoder,)


def component(name: str) -> ComponentSpec:
    return next(spec for spec in COMPONENTS if spec.name == name)
