"""Stable Diffusion 1.x on an exported folder: prompt -> text encoder -> sampled latents -> VAE -> images.

Randomness: image i of a call uses its own generator, `numpy.random.default_rng(seed + i)`, so it is
the same image as a call for one image with seed + i. Each generator draws, in this order:
- with an init image, the VAE latent sample's noise (latent shape), unless an inpainting UNet runs at
  strength 1 (it starts from pure noise and sees the init image only masked);
- the starting noise (latent shape);
- when inpainting (a mask given, or any call to an inpainting UNet), the masked image's VAE latent
  sample's noise (latent shape; drawn but unused under a plain UNet);
- one draw (latent shape) for each step that re-injects noise, after that step's UNet call (which steps
  do: sdrun.samplers).
All draws are float32 standard normals; this is the order of diffusers' StableDiffusionInpaintPipeline
and StableDiffusionImg2ImgPipeline.
"""

import functools
import math
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import numpy as np
import onnxruntime as ort
from PIL import Image

from sdrun.config_values import real_number, whole_number, whole_numbers
from sdrun.defaults import VAE_CHOICES, GenerationDefaults
from sdrun.errors import GraphOutputError, ModelFolderError, SdrunError, SettingsError, quoted
from sdrun.folder import ModelFolder, open_model_folder
from sdrun.folder_layout import GRAPH_FILE, TINY_VAE_DECODER, TINY_VAE_ENCODER
from sdrun.graphs import Graph
from sdrun.guidance_embedding import guidance_scale_embedding
from sdrun.images import fit_within, from_pixels, load_rgb, open_image, oriented_size, to_pixels
from sdrun.inpaint import DEFAULT_MASK_BLUR, MAX_MASK_BLUR, Mask, load_mask, paste_unmasked
from sdrun.limits import DEFAULT_LIMITS, MAX_GUIDANCE, MAX_PROMPT_CHARACTERS, Limits
from sdrun.memory import (
    DEFAULT_POLICY,
    FAST_POLICY,
    LOW_MEMORY_POLICY,
    MemoryPolicy,
    Sessions,
    set_mmap_threshold,
)
from sdrun.networks import (
    LatentDistribution,
    TextEncoderGraph,
    UNetGraph,
    VaeDecoderGraph,
    VaeEncoderGraph,
)
from sdrun.progress import Progress, ProgressCallback
from sdrun.providers import ProviderRequest, create_session, provider_name, requested_providers
from sdrun.samplers import KnownLatents, first_step, make_sampler, sample
from sdrun.samplers.prediction import Model
from sdrun.schedule import NoiseSchedule, ScheduleError
from sdrun.settings import ImageSettings, check_seed, random_seed
from sdrun.stopping import StopSignal
from sdrun.tiled_vae import decode_tiled
from sdrun.tokenizer import CLIPTokenizer, TokenizerError

# callback(step, total, latents) after each sampler step; returning True stops the run.
StepCallback = Callable[[int, int, np.ndarray], bool | None]
FALLBACK_SIZE = 512
# A UNet sample_size above this (2048 pixels for SD's VAE) is not a Stable Diffusion config.
MAX_SAMPLE_SIZE = 256
# Automatic tiled VAE decoding above this many image pixels: a whole 768x768 decode already holds
# about 6 GB of activations in the SD 1.x decoder (2.7 GB at 512x512), and it grows with the area.
AUTO_TILE_PIXELS = 768 * 768
# Sessions the default policy opens at load, with the chosen VAE decoder (the VAE encoder waits for an
# image-to-image call).
TEXT_TO_IMAGE_GRAPHS = ("text_encoder", "unet")


@dataclass(frozen=True)
class PromptEmbeddings:
    """The text encoder's last hidden states for the prompt, and for the negative prompt unless unused."""

    conditional: np.ndarray
    unconditional: np.ndarray | None


@dataclass(frozen=True)
class Result:
    """The images of one `generate` call and, per image, the settings that reproduce it.

    `stopped` is True when the callback stopped the run: the last image is then decoded from the
    latents it had reached, and no later image was started.
    """

    images: list[Image.Image]
    settings: list[ImageSettings]
    stopped: bool = False


@dataclass(frozen=True)
class GenerationRequest:
    """The settings of one `generate_each` call as `Pipeline.prepare` checked and completed them; `image`
    is the opened init image (None for text-to-image, and then `strength` is None too), `mask` the opened
    mask (None without one, and then `mask_blur` is None too)."""

    prompt: str
    negative_prompt: str
    steps: int
    guidance_scale: float
    sampler: str
    seed: int
    width: int
    height: int
    num_images: int
    image: Image.Image | None
    strength: float | None
    mask: Image.Image | None = None
    mask_blur: int | None = None
    overlay: bool = True


class NegativePromptIgnoredWarning(UserWarning):
    """A negative prompt was given where it has no effect: guidance off (scale 1), or an LCM UNet (which
    takes the guidance scale as an input and has no unconditional pass)."""


@dataclass(frozen=True)
class GeneratedImage:
    """One image of `Pipeline.generate_each`; `stopped`: the callback stopped the run during it."""

    image: Image.Image
    settings: ImageSettings
    stopped: bool = False


def _whole(value: object, name: str, low: int) -> int:
    """An integral setting (numpy integers too; bools are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise SettingsError(f"{name} must be a whole number >= {low}, not {quoted(value)}")
    return int(value)


def _finite(value: object, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise SettingsError(f"{name} must be a number, not {quoted(value)}")
    if not (math.isfinite(value) and low <= value <= high):
        raise SettingsError(
            f"{name} {quoted(value)} is out of range: give a finite number from {low:g} to {high:g}"
        )
    return float(value)


def _check_prompt(text: object, name: str) -> str:
    if not isinstance(text, str):
        raise SettingsError(f"the {name} must be text, not {type(text).__name__}")
    if len(text) > MAX_PROMPT_CHARACTERS:
        raise SettingsError(
            f"the {name} has {len(text):,} characters, above the limit of {MAX_PROMPT_CHARACTERS:,} "
            "(the text encoder reads the first 77 tokens, about 300 characters)"
        )
    return text


_Arguments = ParamSpec("_Arguments")
_Item = TypeVar("_Item")
_Network = TypeVar("_Network", bound=Graph)


def _serialized(
    method: "Callable[Concatenate[Pipeline, _Arguments], Iterator[_Item]]",
) -> "Callable[Concatenate[Pipeline, _Arguments], Iterator[_Item]]":
    """A generator method run under the pipeline's lock, from its first item until it is exhausted or
    closed; refused once the pipeline is closed."""

    @functools.wraps(method)
    def run(pipeline: "Pipeline", *args: _Arguments.args, **kwargs: _Arguments.kwargs) -> Iterator[_Item]:
        with pipeline._lock:
            if pipeline.closed:
                raise SdrunError("this pipeline is closed: load the model folder again to generate")
            yield from method(pipeline, *args, **kwargs)

    return run


class Pipeline:
    """Sessions for one model folder, and generation with them. Create with `Pipeline.load`.

    Which sessions stay open and how onnxruntime allocates follow the pipeline's `MemoryPolicy`: the
    default keeps the three text-to-image sessions open from load; the low-memory policy opens each for
    its stage of a generation and releases it after (see sdrun.memory). `sessions` holds the open ones.
    Each graph opens as its network's wrapper (sdrun.networks), which reads its inputs then.

    Threads: `generate` and `generate_each` are serialized by a lock of the pipeline, so one pipeline may
    be shared by several threads: calls run one after the other (a `generate_each` holds the lock from
    its first image until it is exhausted or closed), each gives the images it would give alone, and the
    low-memory policy still has at most one network open at a time. The stage methods (`encode_prompt`,
    `denoise`, `decode`, ...) take no lock: call them from one thread. `close()` (or leaving a `with`
    block) releases every session; a closed pipeline refuses to generate.
    """

    def __init__(
        self,
        folder: ModelFolder,
        tokenizer: CLIPTokenizer,
        schedule: NoiseSchedule,
        providers: ProviderRequest,
        memory: MemoryPolicy = DEFAULT_POLICY,
        limits: Limits = DEFAULT_LIMITS,
        vae: str | None = None,
    ) -> None:
        self.folder = folder
        self.tokenizer = tokenizer
        self.schedule = schedule
        self.memory = memory
        self.defaults = GenerationDefaults.from_manifest(folder.manifest)
        self.vae = self.defaults.vae if vae is None else vae
        self.vae_decoder, self.vae_encoder = _vae_graphs(folder, self.vae)
        self._providers = providers
        self.sessions = Sessions(self._open_graph, keep=memory.keep_sessions, trim_heap=memory.trim_heap)
        if memory.mmap_threshold is not None:
            set_mmap_threshold(memory.mmap_threshold)
        self.provider: str | None = None  # set when the first session opens
        # Reentrant, so that a thread interleaving two of its own generate_each calls is not deadlocked.
        self._lock = threading.RLock()
        self.closed = False

        self.limits = limits
        _check_token_length(tokenizer, folder.config("text_encoder"))
        decoder_config = folder.config("vae_decoder")
        where = "vae_decoder/config.json"
        self.latent_scale = real_number(decoder_config, "scaling_factor", where, 0.0, 1e3, open_low=True)
        vae_factor = 2 ** (len(whole_numbers(decoder_config, "block_out_channels", where, 1, 2**16, 8)) - 1)
        self.latent_channels = whole_number(decoder_config, "latent_channels", where, 1, 1024)
        unet_config = folder.config("unet")
        latent_multiple = folder.facts.latent_multiple
        if latent_multiple is None:
            # optimum's UNet graphs upsample by fixed factors of 2: each downsampling must divide evenly.
            blocks = whole_numbers(unet_config, "block_out_channels", "unet/config.json", 1, 2**16, 8)
            latent_multiple = 2 ** (len(blocks) - 1)
        self.vae_factor = vae_factor
        # Baked into the text encoder graph; known here only to be written into each PNG.
        self.clip_skip = folder.facts.clip_skip
        self.size_multiple = vae_factor * latent_multiple
        sample_size = whole_number(unet_config, "sample_size", "unet/config.json", 1, MAX_SAMPLE_SIZE, None)
        # An LCM-distilled UNet takes the guidance scale as an input (sdrun.guidance_embedding): one pass a
        # step, no negative prompt. Read from the config so that it is known before the UNet opens.
        self.guidance_embedding_dim = whole_number(
            unet_config, "time_cond_proj_dim", "unet/config.json", 4, 2**16, None
        )
        self.default_size = sample_size * vae_factor if sample_size is not None else FALLBACK_SIZE
        # An inpainting UNet takes the mask and the masked image's latents after the latents' channels.
        channels = self.latent_channels
        in_channels = whole_number(unet_config, "in_channels", "unet/config.json", 1, 1024, channels)
        inpainting_channels = 2 * channels + 1
        if in_channels not in (channels, inpainting_channels):
            raise ModelFolderError(
                f"unet/config.json: in_channels {in_channels} is neither the latent channels ({channels}) "
                f"nor an inpainting UNet's ({inpainting_channels}); sdrun cannot run this UNet"
            )
        self.inpainting = in_channels == inpainting_channels

    def close(self) -> None:
        """Release every session now (waiting for a generation in progress to end); idempotent."""
        with self._lock:
            self.closed = True
            for component in self.sessions.open_graphs:
                self.sessions.release(component)

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @classmethod
    def load(
        cls,
        folder: str | Path,
        provider: str = "auto",
        *,
        verify_checksums: bool = True,
        low_memory: bool = False,
        fast: bool = False,
        sequential_guidance: bool | None = None,
        tiled_vae: bool | None = None,
        memory: MemoryPolicy | None = None,
        limits: Limits | None = None,
        require_manifest: bool = False,
        vae: str | None = None,
    ) -> "Pipeline":
        """Open and check `folder`, then create sessions on `provider` ("auto", "cpu", "cuda" or "openvino").

        "auto" takes CUDA when this onnxruntime offers it and it starts, else OpenVINO for a folder that runs
        whole on it (sdrun.providers), else the CPU; `provider` on
        the result says which. `low_memory` trades time for peak memory (sdrun.memory: sessions opened
        per stage, guidance passes one after the other, tiled VAE decoding, int8-weight friendly order);
        `fast` trades peak memory for time (onnxruntime's memory arena kept: see MemoryPolicy).
        `sequential_guidance` runs the conditional and unconditional UNet passes one after the other (half
        the activation memory) instead of as one batch of two; `tiled_vae` decodes in tiles
        (sdrun.tiled_vae). Left as None, these two follow `low_memory`; without it, images larger than
        768x768 are decoded in tiles. `memory`, when given, is the whole policy and replaces `low_memory`
        and `fast`. `limits` bounds what one generation may ask (sdrun.limits). Every file of the folder
        is checked before a session opens (sdrun.folder); `require_manifest` refuses a folder without an
        sdexport manifest, which otherwise runs with an UnverifiedFolderWarning. `vae` "tiny" decodes
        (and encodes, when the folder has its encoder) with the folder's TAESD, "full" with the full VAE;
        None takes the folder's generation defaults, else "full".
        """
        if low_memory and fast:
            raise SettingsError("low_memory and fast pull opposite ways (memory against speed): choose one")
        model = open_model_folder(
            folder, verify_checksums=verify_checksums, require_manifest=require_manifest
        )
        providers = requested_providers(provider, model.manifest)
        try:
            tokenizer = CLIPTokenizer.from_folder(model.tokenizer_dir)
            schedule = NoiseSchedule.from_config(model.scheduler_config())
        except (TokenizerError, ScheduleError) as error:
            raise ModelFolderError(f"model folder {model.path}: {error}") from error
        if memory is None:
            memory = LOW_MEMORY_POLICY if low_memory else FAST_POLICY if fast else DEFAULT_POLICY
        if sequential_guidance is not None:
            memory = replace(memory, sequential_guidance=sequential_guidance)
        if tiled_vae is not None:
            memory = replace(memory, tiled_vae=tiled_vae)
        pipeline = cls(model, tokenizer, schedule, providers, memory, limits or DEFAULT_LIMITS, vae)
        # The text encoder opens now under either policy: a folder or provider problem shows at load.
        graphs = (*TEXT_TO_IMAGE_GRAPHS, pipeline.vae_decoder) if memory.keep_sessions else ("text_encoder",)
        pipeline.sessions.preload(*graphs)
        return pipeline

    def _open_graph(self, component: str) -> Graph:
        """A session on `component`'s graph, wrapped as the network it is; refused once the pipeline is
        closed (every stage method opens its graph through here, so none reopens a released session)."""
        if self.closed:
            raise SdrunError("this pipeline is closed: load the model folder again to use it")
        session = _create_session(self.folder, component, self._providers, self.memory)
        if self.provider is None:
            self.provider = provider_name(session)
        if component == "text_encoder":
            return TextEncoderGraph(component, session)
        if component == "unet":
            return UNetGraph(component, session, self.guidance_embedding_dim)
        if component == self.vae_decoder:
            return VaeDecoderGraph(component, session, self.vae_factor)
        tiny = component == TINY_VAE_ENCODER
        return VaeEncoderGraph(component, session, self.latent_channels, self.vae_factor, tiny)

    def _network(self, component: str, kind: type[_Network]) -> _Network:
        """The open graph of `component` (opened if need be) as the network class it was wrapped in."""
        graph = self.sessions.get(component)
        if not isinstance(graph, kind):
            raise TypeError(f"{component} opened as {type(graph).__name__}, not {kind.__name__}")
        return graph

    @property
    def _graphs(self) -> dict[str, Graph]:
        """The sessions open now, by component."""
        return self.sessions.open_graphs

    @property
    def sequential_guidance(self) -> bool:
        """Whether the guidance pair runs as two UNet calls; a UNet graph exported with a fixed batch of
        one cannot take the pair in one call."""
        if self.memory.sequential_guidance:
            return True
        return self._network("unet", UNetGraph).batch_of_one

    def unconditional_pass(self, guidance_scale: float) -> bool:
        """Whether guidance runs an unconditional UNet pass beside the conditional one (two a step)."""
        return guidance_scale != 1.0 and self.guidance_embedding_dim is None

    def encode_prompt(self, prompt: str, negative_prompt: str, guidance_scale: float) -> PromptEmbeddings:
        """Text encoder states of both prompts in one call; the negative one is skipped at guidance 1 and
        under an LCM UNet (whose guidance is an input, not an unconditional pass)."""
        with_negative = self.unconditional_pass(guidance_scale)
        prompts = [prompt, negative_prompt] if with_negative else [prompt]
        ids = self.tokenizer.encode(prompts)
        with self.sessions.use("text_encoder"):
            states = self._network("text_encoder", TextEncoderGraph).encode(ids)
        return PromptEmbeddings(states[:1], states[1:] if with_negative else None)

    def encode_image(self, image: Image.Image) -> LatentDistribution:
        """The VAE encoder's latent distribution for an RGB image whose sides are multiples of 8
        (text-to-image never needs the encoder: it opens on first use). TAESD's encoder gives a
        distribution of zero spread: its noise is still drawn, so the draws stay those of the contract."""
        return self.encode_pixels(to_pixels(image))

    def encode_pixels(self, pixels: np.ndarray) -> LatentDistribution:
        """`encode_image` for pixels [1, 3, H, W] in [-1, 1] (a masked image is not 8-bit)."""
        with self.sessions.use(self.vae_encoder):
            return self._network(self.vae_encoder, VaeEncoderGraph).encode(pixels)

    def guided_model(
        self,
        embeddings: PromptEmbeddings,
        guidance_scale: float,
        conditioning: np.ndarray | None = None,
        before_pass: Callable[[], None] | None = None,
    ) -> Model:
        """model(x, t) for the samplers: classifier-free guidance, eps_u + s (eps_c - eps_u)
        (Ho & Salimans 2022, eq. 6), or the conditional prediction alone when there is no negative; an
        LCM UNet is given the guidance scale as its embedding instead, in one pass. An inpainting UNet's
        `conditioning` (mask and masked-image latents, [1, 5, h, w]) goes with every latent it sees.
        `before_pass()` runs before every UNet pass (StopSignal.before_unet_pass)."""
        cond, uncond = embeddings.conditional, embeddings.unconditional
        predict = self._network("unet", UNetGraph).predict

        def unet(
            x: np.ndarray, t: float, context: np.ndarray, guidance: np.ndarray | None = None
        ) -> np.ndarray:
            if before_pass is not None:
                before_pass()
            extra = None if conditioning is None else np.repeat(conditioning, len(x), axis=0)
            return predict(x, t, context, guidance, extra)

        if self.guidance_embedding_dim is not None:
            guidance = guidance_scale_embedding(guidance_scale, 1, self.guidance_embedding_dim)

            def embedded(x: np.ndarray, t: float) -> np.ndarray:
                batch = len(x)
                return unet(x, t, np.repeat(cond, batch, axis=0), np.repeat(guidance, batch, axis=0))

            return embedded
        sequential = self.sequential_guidance

        def model(x: np.ndarray, t: float) -> np.ndarray:
            if uncond is None:
                return unet(x, t, np.repeat(cond, len(x), axis=0))
            if sequential:
                out_uncond = unet(x, t, np.repeat(uncond, len(x), axis=0))
                out_cond = unet(x, t, np.repeat(cond, len(x), axis=0))
            else:
                context = np.concatenate([np.repeat(uncond, len(x), axis=0), np.repeat(cond, len(x), axis=0)])
                out_uncond, out_cond = np.split(unet(np.concatenate([x, x]), t, context), 2)
            return out_uncond + guidance_scale * (out_cond - out_uncond)

        return model

    def denoise(
        self,
        embeddings: PromptEmbeddings,
        noise: np.ndarray,
        rng: np.random.Generator,
        *,
        steps: int,
        guidance_scale: float,
        sampler: str,
        init_latents: np.ndarray | None = None,
        strength: float = 1.0,
        mask: np.ndarray | None = None,
        masked_latents: np.ndarray | None = None,
        callback: StepCallback | None = None,
        stop: StopSignal | None = None,
    ) -> np.ndarray:
        """Sample latents from `noise` (or, with `init_latents`, from those noised to `strength`).

        With a `mask` (latent size, 1 where to repaint), inpainting as diffusers'
        StableDiffusionInpaintPipeline does it: at strength 1 from pure noise; an inpainting UNet sees the
        mask and `masked_latents` beside the latents, a plain one has `init_latents` pasted back outside the
        mask after every step. `stop` is looked at before every UNet pass (sdrun.stopping)."""
        known, conditioning = None, None
        if mask is not None:
            if self.inpainting:
                conditioning = np.concatenate([mask, masked_latents], axis=1)
            else:
                known = KnownLatents(init_latents, mask)
            if strength == 1.0:
                init_latents = None
        with self.sessions.use("unet"):
            before_pass = None if stop is None else stop.before_unet_pass
            model = self.guided_model(embeddings, guidance_scale, conditioning, before_pass)
            return sample(
                sampler,
                model,
                self.schedule,
                steps,
                noise,
                rng,
                init_latents=init_latents,
                strength=strength,
                callback=callback,
                known=known,
            )

    def decode(self, latents: np.ndarray) -> list[Image.Image]:
        """Scaled latents -> images, one VAE call per image to bound its memory, in tiles when the
        memory policy asks for them (or, by default, beyond 768x768 pixels)."""
        with self.sessions.use(self.vae_decoder):
            return [self._decode_one(item[None]) for item in latents]

    def _decode_one(self, latent: np.ndarray, stop: StopSignal | None = None) -> Image.Image:
        decoder = self._network(self.vae_decoder, VaeDecoderGraph)

        def decode(latents: np.ndarray) -> np.ndarray:
            if stop is not None:
                stop.check()  # before the whole decode, or before each tile
            return decoder.decode(latents)

        item = latent / self.latent_scale
        tiled = self.memory.tiled_vae
        if tiled is None:
            tiled = item.shape[2] * item.shape[3] * self.vae_factor**2 > AUTO_TILE_PIXELS
        pixels = decode_tiled(decode, item, self.vae_factor) if tiled else decode(item)
        return from_pixels(pixels)

    def check_settings(
        self, steps: int, sampler: str, height: int, width: int, strength: float | None
    ) -> None:
        """Refuse settings this model cannot run, each with the fix in the message."""
        make_sampler(sampler, self.schedule, steps, strength=1.0 if strength is None else strength)
        if strength is not None:
            first_step(steps, strength, sampler)
        for name, side in (("height", height), ("width", width)):
            if (
                isinstance(side, bool)
                or not isinstance(side, (int, np.integer))
                or side <= 0
                or side % self.size_multiple
            ):
                raise SettingsError(
                    f"{name} {side!r} is not a positive multiple of {self.size_multiple}, "
                    f"which this model needs (e.g. {self.default_size})"
                )
        self.limits.check_size(int(width), int(height))

    def prepare(
        self,
        prompt: str,
        negative_prompt: str = "",
        *,
        steps: int | None = None,
        guidance_scale: float | None = None,
        sampler: str | None = None,
        seed: int | None = None,
        height: int | None = None,
        width: int | None = None,
        num_images: int = 1,
        init_image: Image.Image | str | Path | None = None,
        strength: float | None = None,
        mask: Image.Image | str | Path | None = None,
        mask_blur: int = DEFAULT_MASK_BLUR,
        overlay: bool = True,
    ) -> GenerationRequest:
        """The settings of a `generate_each` call, checked and completed without running any network:
        a SettingsError here is the one that call would raise. A server calls it before queueing a job."""
        if mask is not None and init_image is None:
            raise SettingsError("a mask marks what to repaint in an init image: give the init image too")
        for what, given in (("init image", init_image), ("mask", mask)):
            if given is not None and not isinstance(given, Image.Image | str | Path):
                raise SettingsError(
                    f"the {what} must be a PIL image or a file path, not {type(given).__name__}"
                )
        if not isinstance(overlay, bool):
            raise SettingsError(f"overlay must be True or False, not {overlay!r}")
        mask_blur = _whole(mask_blur, "mask blur", 0)
        if mask_blur > MAX_MASK_BLUR:
            raise SettingsError(f"mask blur {mask_blur} is out of range: give 0 to {MAX_MASK_BLUR} pixels")
        defaults = self.defaults
        prompt = _check_prompt(prompt, "prompt")
        negative_prompt = _check_prompt(negative_prompt, "negative prompt")
        steps = _whole(defaults.steps if steps is None else steps, "steps", 1)
        guidance_scale = _finite(
            defaults.guidance_scale if guidance_scale is None else guidance_scale,
            "guidance scale",
            -MAX_GUIDANCE,
            MAX_GUIDANCE,
        )
        if negative_prompt and (guidance_scale == 1.0 or self.guidance_embedding_dim is not None):
            where = "under an LCM UNet" if self.guidance_embedding_dim is not None else "at guidance 1"
            warnings.warn(
                f"the negative prompt is ignored {where} (one UNet pass a step, with no unconditional "
                "prediction to steer away from)",
                NegativePromptIgnoredWarning,
                stacklevel=2,
            )
        sampler = defaults.sampler if sampler is None else sampler
        strength = _finite(defaults.strength if strength is None else strength, "strength", 0.0, 1.0)
        num_images = _whole(num_images, "the number of images", 1)
        self.limits.check_counts(num_images, steps)
        seed = random_seed(num_images) if seed is None else check_seed(seed, num_images)
        image = None
        if init_image is not None:
            image = open_image(init_image, self.limits.max_init_pixels)
            fitted = self._init_size(*oriented_size(image))
            if min(fitted) < self.size_multiple and (width is None or height is None):
                raise SettingsError(
                    f"init image is {image.width}x{image.height}, smaller than {self.size_multiple} pixels a "
                    "side; give a larger image or the width and height to resize it to"
                )
            width = fitted[0] if width is None else width
            height = fitted[1] if height is None else height
        opened_mask = None if mask is None else open_image(mask, self.limits.max_init_pixels, "mask")
        width = self.default_size if width is None else width
        height = self.default_size if height is None else height
        self.check_settings(steps, sampler, height, width, strength if image is not None else None)
        steps_run = steps - first_step(steps, strength, sampler) if image is not None else steps
        passes = 2 if self.unconditional_pass(guidance_scale) else 1
        self.limits.check_work(num_images, steps_run, passes, int(width), int(height), self.vae_factor)
        return GenerationRequest(
            prompt=prompt,
            negative_prompt=negative_prompt,
            steps=steps,
            guidance_scale=guidance_scale,
            sampler=sampler,
            seed=seed,
            width=int(width),
            height=int(height),
            num_images=num_images,
            image=image,
            strength=strength if image is not None else None,
            mask=opened_mask,
            mask_blur=mask_blur if opened_mask is not None else None,
            overlay=overlay,
        )

    def generate(
        self,
        prompt: str,
        negative_prompt: str = "",
        *,
        steps: int | None = None,
        guidance_scale: float | None = None,
        sampler: str | None = None,
        seed: int | None = None,
        height: int | None = None,
        width: int | None = None,
        num_images: int = 1,
        init_image: Image.Image | str | Path | None = None,
        strength: float | None = None,
        mask: Image.Image | str | Path | None = None,
        mask_blur: int = DEFAULT_MASK_BLUR,
        overlay: bool = True,
        callback: StepCallback | None = None,
        progress: ProgressCallback | None = None,
        stop: StopSignal | None = None,
    ) -> Result:
        """Text-to-image, image-to-image when `init_image` is given, inpainting with a `mask` too: the
        images of `generate_each` (which says what each setting does), all kept in the Result."""
        images, made, stopped = [], [], False
        for generated in self.generate_each(
            prompt,
            negative_prompt,
            steps=steps,
            guidance_scale=guidance_scale,
            sampler=sampler,
            seed=seed,
            height=height,
            width=width,
            num_images=num_images,
            init_image=init_image,
            strength=strength,
            mask=mask,
            mask_blur=mask_blur,
            overlay=overlay,
            callback=callback,
            progress=progress,
            stop=stop,
        ):
            images.append(generated.image)
            made.append(generated.settings)
            stopped = generated.stopped
        return Result(images, made, stopped)

    @_serialized
    def generate_each(
        self,
        prompt: str,
        negative_prompt: str = "",
        *,
        steps: int | None = None,
        guidance_scale: float | None = None,
        sampler: str | None = None,
        seed: int | None = None,
        height: int | None = None,
        width: int | None = None,
        num_images: int = 1,
        init_image: Image.Image | str | Path | None = None,
        strength: float | None = None,
        mask: Image.Image | str | Path | None = None,
        mask_blur: int = DEFAULT_MASK_BLUR,
        overlay: bool = True,
        callback: StepCallback | None = None,
        progress: ProgressCallback | None = None,
        stop: StopSignal | None = None,
    ) -> Iterator[GeneratedImage]:
        """Text-to-image, or image-to-image when `init_image` is given; each image is yielded as soon as
        it is decoded, so that a caller can write it and let it go.

        Every setting is checked (against `self.limits` too) when iteration starts, before any session
        runs. The size defaults to the UNet's sample size in pixels for text-to-image; for image-to-image,
        to the init image's size, scaled down (aspect kept) to the model's pixel count when larger, and
        rounded down to the model's multiple; an init image of another size than the one asked for is
        resized. `callback(step, total, latents)` counts steps over all images; `progress(Progress)`
        says which image and step (sdrun.progress) without the latents; either returning True stops the
        run. `stop` (sdrun.stopping), set from another thread, interrupts or cancels the run within one
        UNet pass, VAE pass or tile. Steps, guidance scale, sampler and strength not given are the model
        folder's (`self.defaults`).

        Inpainting: `mask` (white = repaint; its alpha channel if it has transparency) is resized to the
        image size and blurred by `mask_blur` pixels (sdrun.inpaint); an inpainting UNet (9 input channels)
        is given it and the masked image, a plain UNet keeps the init image's latents outside it (both as
        diffusers' StableDiffusionInpaintPipeline). With `overlay` the init image's pixels are pasted back
        outside the blurred mask after decoding (as AUTOMATIC1111 does; diffusers leaves them as decoded).
        An inpainting UNet without a mask repaints the whole image.
        """
        request = self.prepare(
            prompt,
            negative_prompt,
            steps=steps,
            guidance_scale=guidance_scale,
            sampler=sampler,
            seed=seed,
            height=height,
            width=width,
            num_images=num_images,
            init_image=init_image,
            strength=strength,
            mask=mask,
            mask_blur=mask_blur,
            overlay=overlay,
        )
        embeddings = self.encode_prompt(request.prompt, request.negative_prompt, request.guidance_scale)
        size = (request.width, request.height)
        init = load_rgb(request.image, size) if request.image is not None else None
        mask = load_mask(request.mask, size, request.mask_blur or 0) if request.mask is not None else None
        if mask is None and self.inpainting:
            mask = Mask.everywhere(size)
        # An inpainting UNet at full strength starts from pure noise and sees the init image only masked.
        init_unused = self.inpainting and request.strength == 1.0
        if stop is not None:
            stop.check()
        distribution = self.encode_image(init) if init is not None and not init_unused else None
        masked_distribution = None
        if self.inpainting and mask is not None:
            pixels = to_pixels(init) if init is not None else np.zeros((1, 3, size[1], size[0]), np.float32)
            masked_distribution = self.encode_pixels(mask.masked(pixels))
        latent_shape = (
            1,
            self.latent_channels,
            request.height // self.vae_factor,
            request.width // self.vae_factor,
        )
        sampled = self._sample_images(
            embeddings,
            distribution,
            masked_distribution,
            None if mask is None else mask.latent(self.vae_factor),
            latent_shape,
            request.seed,
            request.num_images,
            callback,
            progress,
            stop,
            steps=request.steps,
            guidance_scale=request.guidance_scale,
            sampler=request.sampler,
            strength=1.0 if request.strength is None else request.strength,
        )
        if not self.memory.keep_sessions:
            # Every image is sampled before any is decoded, so that each session opens once per call;
            # the latents waiting for the decoder are small.
            with self.sessions.use("unet"):
                sampled = iter(list(sampled))
        with self.sessions.use(self.vae_decoder):
            for index, (latents, stopped) in enumerate(sampled):
                settings = ImageSettings(
                    prompt=request.prompt,
                    negative_prompt=request.negative_prompt,
                    steps=request.steps,
                    sampler=request.sampler,
                    guidance_scale=request.guidance_scale,
                    seed=request.seed + index,
                    width=request.width,
                    height=request.height,
                    model=self.folder.name,
                    strength=request.strength,
                    mask_blur=request.mask_blur,
                    overlay=request.overlay,
                    clip_skip=self.clip_skip,
                )
                picture = self._decode_one(latents, stop)
                if request.overlay and request.mask is not None and init is not None and mask is not None:
                    picture = paste_unmasked(picture, init, mask)
                yield GeneratedImage(picture, settings, stopped)

    def _init_size(self, width: int, height: int) -> tuple[int, int]:
        """An init image's size scaled down, aspect kept, to the model's pixel count when larger, and
        rounded down to the model's size multiple."""
        return fit_within(width, height, self.default_size**2, self.size_multiple)

    def _sample_images(
        self,
        embeddings: PromptEmbeddings,
        distribution: LatentDistribution | None,
        masked_distribution: LatentDistribution | None,
        latent_mask: np.ndarray | None,
        latent_shape: tuple[int, ...],
        seed: int,
        num_images: int,
        callback: StepCallback | None,
        progress: ProgressCallback | None,
        stop: StopSignal | None,
        **sampling: Any,
    ) -> Iterator[tuple[np.ndarray, bool]]:
        """(latents, stopped) of image i from default_rng(seed + i), in the order the module docstring
        gives; stops after the image during which the callback asked to or `stop` was interrupted."""
        for index in range(num_images):
            rng = np.random.default_rng(seed + index)
            init_latents = None
            if distribution is not None:
                init_latents = distribution.sample(rng.standard_normal(latent_shape, dtype=np.float32))
                init_latents = init_latents * self.latent_scale
            noise = rng.standard_normal(latent_shape, dtype=np.float32)
            masked_latents = None
            if latent_mask is not None:
                # Drawn under a plain UNet too, which has no use for it, as diffusers draws it.
                masked_noise = rng.standard_normal(latent_shape, dtype=np.float32)
                if masked_distribution is not None:
                    masked_latents = masked_distribution.sample(masked_noise) * self.latent_scale
            stopped = False

            def on_step(step: int, total: int, latents: np.ndarray, index: int = index) -> bool:
                nonlocal stopped
                asked = callback is not None and callback(index * total + step, num_images * total, latents)
                told = progress is not None and progress(Progress(index, num_images, step + 1, total))
                stopped = bool(asked) or bool(told)
                return stopped

            with self.sessions.use("unet"):
                latents = self.denoise(
                    embeddings,
                    noise,
                    rng,
                    init_latents=init_latents,
                    mask=latent_mask,
                    masked_latents=masked_latents,
                    callback=on_step,
                    stop=stop,
                    **sampling,
                )
            stopped = stopped or (stop is not None and stop.interrupted.is_set())
            if not np.isfinite(latents).all():
                raise GraphOutputError(
                    f"sampling with {sampling['sampler']} diverged to NaN or infinite latents; nothing was "
                    "written (try fewer steps, a smaller guidance scale or another sampler)"
                )
            yield latents, stopped
            if stopped:
                return


def _check_token_length(tokenizer: CLIPTokenizer, encoder_config: dict[str, Any]) -> None:
    """Refuse a tokenizer whose model_max_length the text encoder has no positions for: it would fail
    inside onnxruntime at the first prompt instead of when the folder opens."""
    where = "text_encoder/config.json"
    positions = whole_number(encoder_config, "max_position_embeddings", where, 1, 2**20, None)
    if positions is not None and tokenizer.max_length > positions:
        raise ModelFolderError(
            f"tokenizer/tokenizer_config.json: model_max_length {tokenizer.max_length} is more than the "
            f"{positions} positions of the text encoder ({where}); set it to {positions} or export the "
            "model folder again"
        )


def _vae_graphs(folder: ModelFolder, vae: str) -> tuple[str, str]:
    """The decoder and encoder graphs of `vae`; the tiny decoder goes with the full encoder when the
    folder has no tiny one (image-to-image only)."""
    if vae not in VAE_CHOICES:
        raise SettingsError(f"vae {vae!r}: choose one of {', '.join(VAE_CHOICES)}")
    if vae == "full":
        return "vae_decoder", "vae_encoder"
    if not folder.has(f"{TINY_VAE_DECODER}/{GRAPH_FILE}"):
        raise SettingsError(
            f"model folder {folder.path} has no tiny VAE ({TINY_VAE_DECODER}); build one with "
            "`sdexport build SOURCE --tiny-vae taesd_decoder.safetensors`, or use the full VAE"
        )
    encoder = TINY_VAE_ENCODER if folder.has(f"{TINY_VAE_ENCODER}/{GRAPH_FILE}") else "vae_encoder"
    return TINY_VAE_DECODER, encoder


def _create_session(
    folder: ModelFolder, component: str, providers: ProviderRequest, memory: MemoryPolicy
) -> ort.InferenceSession:
    path = folder.graph(component)
    try:
        session = create_session(path, providers, memory.session_options())
    except SdrunError:
        raise
    except Exception as error:  # onnxruntime raises its own classes for unreadable or invalid graphs
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelFolderError(
            f"onnxruntime cannot load {path}: {first_line}; export the model folder again"
        ) from error
    return session
