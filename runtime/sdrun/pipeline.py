"""Stable Diffusion 1.x on an exported folder: prompt -> text encoder -> sampled latents -> VAE -> images.

Randomness: image i of a call uses its own generator, `numpy.random.default_rng(seed + i)`, so it is
the same image as a call for one image with seed + i. Each generator draws, in this order: for
image-to-image, the VAE latent sample's noise (latent shape); then the starting noise (latent shape);
then whatever the sampler draws per step (ancestral samplers only). All draws are float32 standard
normals.
"""

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sdrun.defaults import GenerationDefaults
from sdrun.errors import ModelFolderError, SdrunError, SettingsError
from sdrun.folder import LATENT_MULTIPLE_KEY, ModelFolder, open_model_folder
from sdrun.graphs import Graph
from sdrun.images import fit_size, from_pixels, load_image, to_pixels
from sdrun.memory import (
    DEFAULT_POLICY,
    FAST_POLICY,
    LOW_MEMORY_POLICY,
    MemoryPolicy,
    Sessions,
    set_mmap_threshold,
)
from sdrun.providers import ProviderRequest, create_session, provider_name, requested_providers
from sdrun.samplers import first_step, make_sampler, sample
from sdrun.samplers.prediction import Model
from sdrun.schedule import NoiseSchedule, ScheduleError
from sdrun.settings import ImageSettings
from sdrun.tiled_vae import decode_tiled
from sdrun.tokenizer import CLIPTokenizer, TokenizerError

# callback(step, total, latents) after each sampler step; returning True stops the run.
StepCallback = Callable[[int, int, np.ndarray], bool | None]
FALLBACK_SIZE = 512
_SEED_RANGE = 2**32
# Automatic tiled VAE decoding above this many image pixels: a whole 768x768 decode already holds
# about 6 GB of activations in the SD 1.x decoder (2.7 GB at 512x512), and it grows with the area.
AUTO_TILE_PIXELS = 768 * 768
# Sessions the default policy opens at load (the VAE encoder waits for an image-to-image call).
TEXT_TO_IMAGE_GRAPHS = ("text_encoder", "unet", "vae_decoder")


@dataclass(frozen=True)
class PromptEmbeddings:
    """The text encoder's last hidden states for the prompt, and for the negative prompt unless unused."""

    conditional: np.ndarray
    unconditional: np.ndarray | None


@dataclass(frozen=True)
class LatentDistribution:
    """The VAE encoder's diagonal Gaussian over latents (Kingma & Welling 2014), before scaling."""

    mean: np.ndarray
    std: np.ndarray

    def sample(self, noise: np.ndarray) -> np.ndarray:
        return self.mean + self.std * noise


@dataclass(frozen=True)
class Result:
    """The images of one `generate` call and, per image, the settings that reproduce it.

    `stopped` is True when the callback stopped the run: the last image is then decoded from the
    latents it had reached, and no later image was started.
    """

    images: list[Image.Image]
    settings: list[ImageSettings]
    stopped: bool = False


def _require(config: dict, key: str, component: str) -> object:
    if key not in config:
        raise ModelFolderError(f"{component}/config.json has no {key!r}; export the model folder again")
    return config[key]


class Pipeline:
    """Sessions for one model folder, and generation with them. Create with `Pipeline.load`.

    Which sessions stay open and how onnxruntime allocates follow the pipeline's `MemoryPolicy`: the
    default keeps the three text-to-image sessions open from load; the low-memory policy opens each for
    its stage of a generation and releases it after (see sdrun.memory). `sessions` holds the open ones.
    Each graph's inputs are read when it is first opened.
    """

    def __init__(
        self,
        folder: ModelFolder,
        tokenizer: CLIPTokenizer,
        schedule: NoiseSchedule,
        providers: ProviderRequest,
        memory: MemoryPolicy = DEFAULT_POLICY,
    ) -> None:
        self.folder = folder
        self.tokenizer = tokenizer
        self.schedule = schedule
        self.memory = memory
        self.defaults = GenerationDefaults.from_manifest(folder.manifest())
        self._providers = providers
        self.sessions = Sessions(self._open_graph, keep=memory.keep_sessions, trim_heap=memory.trim_heap)
        if memory.mmap_threshold is not None:
            set_mmap_threshold(memory.mmap_threshold)
        self.provider: str | None = None  # set when the first session opens

        vae_config = folder.config("vae_decoder")
        self.latent_scale = float(_require(vae_config, "scaling_factor", "vae_decoder"))
        vae_factor = 2 ** (len(_require(vae_config, "block_out_channels", "vae_decoder")) - 1)
        self.latent_channels = int(_require(vae_config, "latent_channels", "vae_decoder"))
        unet_config = folder.config("unet")
        latent_multiple = folder.manifest().get(LATENT_MULTIPLE_KEY)
        if not isinstance(latent_multiple, int) or latent_multiple < 1:
            # optimum's UNet graphs upsample by fixed factors of 2: each downsampling must divide evenly.
            latent_multiple = 2 ** max(len(unet_config.get("block_out_channels", ())) - 1, 0)
        self.vae_factor = vae_factor
        self.size_multiple = vae_factor * latent_multiple
        sample_size = unet_config.get("sample_size")
        self.default_size = int(sample_size) * vae_factor if isinstance(sample_size, int) else FALLBACK_SIZE

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
    ) -> "Pipeline":
        """Open and check `folder`, then create sessions on `provider` ("auto", "cpu" or "cuda").

        "auto" takes CUDA when this onnxruntime offers it and it starts, else the CPU; `provider` on
        the result says which. `low_memory` trades time for peak memory (sdrun.memory: sessions opened
        per stage, guidance passes one after the other, tiled VAE decoding, int8-weight friendly order);
        `fast` trades peak memory for time (onnxruntime's memory arena kept: see MemoryPolicy).
        `sequential_guidance` runs the conditional and unconditional UNet passes one after the other (half
        the activation memory) instead of as one batch of two; `tiled_vae` decodes in tiles
        (sdrun.tiled_vae). Left as None, these two follow `low_memory`; without it, images larger than
        768x768 are decoded in tiles. `memory`, when given, is the whole policy and replaces `low_memory`
        and `fast`.
        """
        if low_memory and fast:
            raise SettingsError("low_memory and fast pull opposite ways (memory against speed): choose one")
        model = open_model_folder(folder, verify_checksums=verify_checksums)
        providers = requested_providers(provider)
        try:
            tokenizer = CLIPTokenizer.from_folder(model.tokenizer_dir)
            schedule = NoiseSchedule.from_config(model.scheduler_config())
        except (TokenizerError, ScheduleError) as error:
            raise ModelFolderError(f"model folder {model.path}: {error}") from None
        if memory is None:
            memory = LOW_MEMORY_POLICY if low_memory else FAST_POLICY if fast else DEFAULT_POLICY
        if sequential_guidance is not None:
            memory = replace(memory, sequential_guidance=sequential_guidance)
        if tiled_vae is not None:
            memory = replace(memory, tiled_vae=tiled_vae)
        pipeline = cls(model, tokenizer, schedule, providers, memory)
        # The text encoder opens now under either policy: a folder or provider problem shows at load.
        pipeline.sessions.preload(*(TEXT_TO_IMAGE_GRAPHS if memory.keep_sessions else ("text_encoder",)))
        return pipeline

    def _open_graph(self, component: str) -> Graph:
        graph = _load_graph(self.folder, component, self._providers, self.memory)
        if self.provider is None:
            self.provider = provider_name(graph.session)
        if component == "text_encoder":
            self._input_ids = graph.input_of_rank(2)
            graph.check_inputs([self._input_ids])
            hidden = "last_hidden_state"
            self._hidden_output = hidden if hidden in graph.output_names else None
        elif component == "unet":
            self._sample = graph.input_of_rank(4)
            self._timestep = graph.input_of_rank(0, 1)
            self._context = graph.input_of_rank(3)
            graph.check_inputs([self._sample, self._timestep, self._context])
        elif component == "vae_decoder":
            self._latent_sample = graph.input_of_rank(4)
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
        self.sessions.get("unet")  # its inputs are read when it opens
        return self._sample.shape[0] == 1

    def encode_prompt(self, prompt: str, negative_prompt: str, guidance_scale: float) -> PromptEmbeddings:
        """Text encoder states of both prompts in one call; the negative one is skipped at guidance 1."""
        with_negative = guidance_scale != 1.0
        prompts = [prompt, negative_prompt] if with_negative else [prompt]
        ids = self.tokenizer.encode(prompts)
        with self.sessions.use("text_encoder") as text_encoder:
            states = text_encoder.run({self._input_ids: ids}, self._hidden_output)
        return PromptEmbeddings(states[:1], states[1:] if with_negative else None)

    def encode_image(self, image: Image.Image) -> LatentDistribution:
        """The VAE encoder's latent distribution for an RGB image whose sides are multiples of 8
        (text-to-image never needs the encoder: it opens on first use)."""
        with self.sessions.use("vae_encoder") as encoder:
            parameters = encoder.run({encoder.input_of_rank(4): to_pixels(image)})
        mean, logvar = np.split(parameters, 2, axis=1)
        # The clamp of diffusers' DiagonalGaussianDistribution keeps exp() finite.
        return LatentDistribution(mean, np.exp(0.5 * np.clip(logvar, -30.0, 20.0)))

    def _unet(self, latents: np.ndarray, timestep: float, context: np.ndarray) -> np.ndarray:
        unet = self.sessions.get("unet")
        node = self._timestep
        batch = latents.shape[0]
        shape = () if node.rank == 0 else (node.shape[0] if isinstance(node.shape[0], int) else batch,)
        feeds = {self._sample: latents, self._timestep: np.full(shape, timestep), self._context: context}
        return unet.run(feeds)

    def guided_model(self, embeddings: PromptEmbeddings, guidance_scale: float) -> Model:
        """model(x, t) for the samplers: classifier-free guidance, eps_u + s (eps_c - eps_u)
        (Ho & Salimans 2022, eq. 6), or the conditional prediction alone when there is no negative."""
        cond, uncond = embeddings.conditional, embeddings.unconditional
        sequential = self.sequential_guidance

        def model(x: np.ndarray, t: float) -> np.ndarray:
            if uncond is None:
                return self._unet(x, t, np.repeat(cond, len(x), axis=0))
            if sequential:
                out_uncond = self._unet(x, t, np.repeat(uncond, len(x), axis=0))
                out_cond = self._unet(x, t, np.repeat(cond, len(x), axis=0))
            else:
                context = np.concatenate([np.repeat(uncond, len(x), axis=0), np.repeat(cond, len(x), axis=0)])
                out_uncond, out_cond = np.split(self._unet(np.concatenate([x, x]), t, context), 2)
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
        callback: StepCallback | None = None,
    ) -> np.ndarray:
        """Sample latents from `noise` (or, with `init_latents`, from those noised to `strength`)."""
        with self.sessions.use("unet"):
            model = self.guided_model(embeddings, guidance_scale)
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
            )

    def decode(self, latents: np.ndarray) -> list[Image.Image]:
        """Scaled latents -> images, one VAE call per image to bound its memory, in tiles when the
        memory policy asks for them (or, by default, beyond 768x768 pixels)."""
        with self.sessions.use("vae_decoder") as decoder:

            def run(latent: np.ndarray) -> np.ndarray:
                return decoder.run({self._latent_sample: latent})

            images = []
            for item in latents / self.latent_scale:
                tiled = self.memory.tiled_vae
                if tiled is None:
                    tiled = item.shape[1] * item.shape[2] * self.vae_factor**2 > AUTO_TILE_PIXELS
                pixels = decode_tiled(run, item[None], self.vae_factor) if tiled else run(item[None])
                images.append(from_pixels(pixels))
            return images

    def check_settings(
        self, steps: int, sampler: str, height: int, width: int, strength: float | None
    ) -> None:
        """Refuse settings this model cannot run, each with the fix in the message."""
        make_sampler(sampler, self.schedule, steps)
        if strength is not None:
            first_step(steps, strength)
        for name, side in (("height", height), ("width", width)):
            if not isinstance(side, int) or side <= 0 or side % self.size_multiple:
                raise SettingsError(
                    f"{name} {side!r} is not a positive multiple of {self.size_multiple}, "
                    f"which this model needs (e.g. {self.default_size})"
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
        callback: StepCallback | None = None,
    ) -> Result:
        """Text-to-image, or image-to-image when `init_image` is given.

        The size defaults to the UNet's sample size in pixels for text-to-image, and to the init image's
        size (rounded down to the model's multiple) for image-to-image; an init image of another size
        than the one asked for is resized. `callback(step, total, latents)` counts steps over all images.
        Steps, guidance scale, sampler and strength not given are the model folder's (`self.defaults`).
        """
        defaults = self.defaults
        steps = defaults.steps if steps is None else steps
        guidance_scale = defaults.guidance_scale if guidance_scale is None else guidance_scale
        sampler = defaults.sampler if sampler is None else sampler
        strength = defaults.strength if strength is None else strength
        if not isinstance(num_images, int) or num_images < 1:
            raise SettingsError(
                f"the number of images must be a whole number of at least 1, not {num_images!r}"
            )
        if seed is None:
            seed = int(np.random.default_rng().integers(_SEED_RANGE))
        if not isinstance(seed, int) or seed < 0:
            raise SettingsError(f"seed must be a whole number >= 0, not {seed!r}")
        image = None
        if init_image is not None:
            image = load_image(init_image)
            multiple = self.size_multiple
            if min(image.size) < multiple and (width is None or height is None):
                raise SettingsError(
                    f"init image is {image.width}x{image.height}, smaller than {multiple} pixels a side; "
                    "give a larger image or the width and height to resize it to"
                )
            width = image.width // multiple * multiple if width is None else width
            height = image.height // multiple * multiple if height is None else height
        width = self.default_size if width is None else width
        height = self.default_size if height is None else height
        self.check_settings(steps, sampler, height, width, strength if image is not None else None)

        embeddings = self.encode_prompt(prompt, negative_prompt, guidance_scale)
        distribution = self.encode_image(fit_size(image, width, height)) if image is not None else None
        latent_shape = (1, self.latent_channels, height // self.vae_factor, width // self.vae_factor)
        # Every image is sampled before any is decoded, so that under the low-memory policy each session
        # opens once per call; the latents waiting for the decoder are small.
        with self.sessions.use("unet"):
            sampled, stopped = self._sample_images(
                embeddings,
                distribution,
                latent_shape,
                seed,
                num_images,
                callback,
                steps=steps,
                guidance_scale=guidance_scale,
                sampler=sampler,
                strength=strength if image is not None else 1.0,
            )
        settings = [
            ImageSettings(
                prompt=prompt,
                negative_prompt=negative_prompt,
                steps=steps,
                sampler=sampler,
                guidance_scale=guidance_scale,
                seed=seed + index,
                width=width,
                height=height,
                model=self.folder.name,
                strength=strength if image is not None else None,
            )
            for index in range(len(sampled))
        ]
        return Result(self.decode(np.concatenate(sampled)), settings, stopped)

    def _sample_images(
        self,
        embeddings: PromptEmbeddings,
        distribution: LatentDistribution | None,
        latent_shape: tuple[int, ...],
        seed: int,
        num_images: int,
        callback: StepCallback | None,
        **sampling: Any,
    ) -> tuple[list[np.ndarray], bool]:
        """Latents of image i from default_rng(seed + i), in the order the module docstring gives; stops
        after the image during which the callback asked to."""
        sampled: list[np.ndarray] = []
        stopped = False
        for index in range(num_images):
            rng = np.random.default_rng(seed + index)
            init_latents = None
            if distribution is not None:
                init_latents = distribution.sample(rng.standard_normal(latent_shape, dtype=np.float32))
                init_latents = init_latents * self.latent_scale
            noise = rng.standard_normal(latent_shape, dtype=np.float32)

            def on_step(step: int, total: int, latents: np.ndarray, index: int = index) -> bool:
                nonlocal stopped
                stopped = bool(callback and callback(index * total + step, num_images * total, latents))
                return stopped

            sampled.append(
                self.denoise(embeddings, noise, rng, init_latents=init_latents, callback=on_step, **sampling)
            )
            if stopped:
                break
        return sampled, stopped


def _load_graph(
    folder: ModelFolder, component: str, providers: ProviderRequest, memory: MemoryPolicy
) -> Graph:
    path = folder.graph(component)
    try:
        session = create_session(path, providers, memory.session_options())
    except SdrunError:
        raise
    except Exception as error:  # onnxruntime raises its own classes for unreadable or invalid graphs
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelFolderError(
            f"onnxruntime cannot load {path}: {first_line}; export the model folder again"
        ) from None
    return Graph(component, session)
