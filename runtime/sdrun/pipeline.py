"""Stable Diffusion 1.x on an exported folder: prompt -> text encoder -> sampled latents -> VAE -> images.

Randomness: image i of a call uses its own generator, `numpy.random.default_rng(seed + i)`, so it is
the same image as a call for one image with seed + i. Each generator draws, in this order: for
image-to-image, the VAE latent sample's noise (latent shape); then the starting noise (latent shape);
then whatever the sampler draws per step (ancestral samplers only). All draws are float32 standard
normals.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from sdrun.errors import ModelFolderError, SdrunError, SettingsError
from sdrun.folder import LATENT_MULTIPLE_KEY, ModelFolder, open_model_folder
from sdrun.graphs import Graph
from sdrun.images import fit_size, from_pixels, load_image, to_pixels
from sdrun.providers import ProviderRequest, create_session, provider_name, requested_providers
from sdrun.samplers import first_step, make_sampler, sample
from sdrun.samplers.prediction import Model
from sdrun.schedule import NoiseSchedule, ScheduleError
from sdrun.settings import ImageSettings
from sdrun.tokenizer import CLIPTokenizer, TokenizerError

# callback(step, total, latents) after each sampler step; returning True stops the run.
StepCallback = Callable[[int, int, np.ndarray], bool | None]
FALLBACK_SIZE = 512
DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 7.5
DEFAULT_SAMPLER = "euler_a"
DEFAULT_STRENGTH = 0.8
_SEED_RANGE = 2**32


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
    """Sessions for one model folder, and generation with them. Create with `Pipeline.load`."""

    def __init__(
        self,
        folder: ModelFolder,
        graphs: dict[str, Graph],
        tokenizer: CLIPTokenizer,
        schedule: NoiseSchedule,
        providers: ProviderRequest,
        sequential_guidance: bool = False,
    ) -> None:
        self.folder = folder
        self.tokenizer = tokenizer
        self.schedule = schedule
        self._providers = providers
        self._graphs = graphs
        self.provider = provider_name(graphs["unet"].session)

        text_encoder = graphs["text_encoder"]
        self._input_ids = text_encoder.input_of_rank(2)
        text_encoder.check_inputs([self._input_ids])
        hidden = "last_hidden_state"
        self._hidden_output = hidden if hidden in text_encoder.output_names else None

        unet = graphs["unet"]
        self._sample = unet.input_of_rank(4)
        self._timestep = unet.input_of_rank(0, 1)
        self._context = unet.input_of_rank(3)
        unet.check_inputs([self._sample, self._timestep, self._context])
        # A graph exported with a fixed batch of one cannot take the guidance pair in one call.
        self.sequential_guidance = sequential_guidance or self._sample.shape[0] == 1

        self._latent_sample = graphs["vae_decoder"].input_of_rank(4)
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
        sequential_guidance: bool = False,
    ) -> "Pipeline":
        """Open and check `folder`, then create sessions on `provider` ("auto", "cpu" or "cuda").

        "auto" takes CUDA when this onnxruntime offers it and it starts, else the CPU; `provider` on
        the result says which. `sequential_guidance` runs the conditional and unconditional UNet passes
        one after the other (half the activation memory) instead of as one batch of two.
        """
        model = open_model_folder(folder, verify_checksums=verify_checksums)
        providers = requested_providers(provider)
        graphs = {
            name: _load_graph(model, name, providers) for name in ("text_encoder", "unet", "vae_decoder")
        }
        try:
            tokenizer = CLIPTokenizer.from_folder(model.tokenizer_dir)
            schedule = NoiseSchedule.from_config(model.scheduler_config())
        except (TokenizerError, ScheduleError) as error:
            raise ModelFolderError(f"model folder {model.path}: {error}") from None
        return cls(model, graphs, tokenizer, schedule, providers, sequential_guidance)

    def _vae_encoder(self) -> Graph:
        """Loaded on first use: text-to-image never needs it."""
        if "vae_encoder" not in self._graphs:
            self._graphs["vae_encoder"] = _load_graph(self.folder, "vae_encoder", self._providers)
        return self._graphs["vae_encoder"]

    def encode_prompt(
        self, prompt: str, negative_prompt: str = "", guidance_scale: float = DEFAULT_GUIDANCE
    ) -> PromptEmbeddings:
        """Text encoder states of both prompts in one call; the negative one is skipped at guidance 1."""
        with_negative = guidance_scale != 1.0
        prompts = [prompt, negative_prompt] if with_negative else [prompt]
        ids = self.tokenizer.encode(prompts)
        states = self._graphs["text_encoder"].run({self._input_ids: ids}, self._hidden_output)
        return PromptEmbeddings(states[:1], states[1:] if with_negative else None)

    def encode_image(self, image: Image.Image) -> LatentDistribution:
        """The VAE encoder's latent distribution for an RGB image whose sides are multiples of 8."""
        encoder = self._vae_encoder()
        pixels = encoder.input_of_rank(4)
        parameters = encoder.run({pixels: to_pixels(image)})
        mean, logvar = np.split(parameters, 2, axis=1)
        # The clamp of diffusers' DiagonalGaussianDistribution keeps exp() finite.
        return LatentDistribution(mean, np.exp(0.5 * np.clip(logvar, -30.0, 20.0)))

    def _unet(self, latents: np.ndarray, timestep: float, context: np.ndarray) -> np.ndarray:
        node = self._timestep
        batch = latents.shape[0]
        shape = () if node.rank == 0 else (node.shape[0] if isinstance(node.shape[0], int) else batch,)
        feeds = {self._sample: latents, self._timestep: np.full(shape, timestep), self._context: context}
        return self._graphs["unet"].run(feeds)

    def guided_model(self, embeddings: PromptEmbeddings, guidance_scale: float) -> Model:
        """model(x, t) for the samplers: classifier-free guidance, eps_u + s (eps_c - eps_u)
        (Ho & Salimans 2022, eq. 6), or the conditional prediction alone when there is no negative."""
        cond, uncond = embeddings.conditional, embeddings.unconditional

        def model(x: np.ndarray, t: float) -> np.ndarray:
            if uncond is None:
                return self._unet(x, t, np.repeat(cond, len(x), axis=0))
            if self.sequential_guidance:
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
        """Scaled latents -> images, one VAE call per image to bound its memory."""
        return [
            from_pixels(
                self._graphs["vae_decoder"].run({self._latent_sample: item[None] / self.latent_scale})
            )
            for item in latents
        ]

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
        steps: int = DEFAULT_STEPS,
        guidance_scale: float = DEFAULT_GUIDANCE,
        sampler: str = DEFAULT_SAMPLER,
        seed: int | None = None,
        height: int | None = None,
        width: int | None = None,
        num_images: int = 1,
        init_image: Image.Image | str | Path | None = None,
        strength: float = DEFAULT_STRENGTH,
        callback: StepCallback | None = None,
    ) -> Result:
        """Text-to-image, or image-to-image when `init_image` is given.

        The size defaults to the UNet's sample size in pixels for text-to-image, and to the init image's
        size (rounded down to the model's multiple) for image-to-image; an init image of another size
        than the one asked for is resized. `callback(step, total, latents)` counts steps over all images.
        """
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
        images: list[Image.Image] = []
        settings: list[ImageSettings] = []
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

            latents = self.denoise(
                embeddings,
                noise,
                rng,
                steps=steps,
                guidance_scale=guidance_scale,
                sampler=sampler,
                init_latents=init_latents,
                strength=strength if image is not None else 1.0,
                callback=on_step,
            )
            images.extend(self.decode(latents))
            settings.append(
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
            )
            if stopped:
                break
        return Result(images, settings, stopped)


def _load_graph(folder: ModelFolder, component: str, providers: ProviderRequest) -> Graph:
    path = folder.graph(component)
    try:
        session = create_session(path, providers)
    except SdrunError:
        raise
    except Exception as error:  # onnxruntime raises its own classes for unreadable or invalid graphs
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelFolderError(
            f"onnxruntime cannot load {path}: {first_line}; export the model folder again"
        ) from None
    return Graph(component, session)
