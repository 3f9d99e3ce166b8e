"""Stable Diffusion 1.x on an exported folder: prompt -> text encoder -> sampled latents -> VAE -> images.

The stages run in this order for each call; the random draws of each image, in their documented order, are
sdrun.draws's.
"""

import functools
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import numpy as np
from PIL import Image

from sdrun.a1111 import model_hash
from sdrun.defaults import GenerationDefaults
from sdrun.draws import SeedFeatures, draw_image, image_noise
from sdrun.errors import GraphOutputError, ModelFolderError, SdrunError, SettingsError
from sdrun.folder import ModelFolder, open_model_folder
from sdrun.folder_layout import TEXT_ENCODER, TINY_VAE_ENCODER, UNET
from sdrun.graphs import Graph
from sdrun.guidance import PromptEmbeddings, guided_model, unconditional_pass
from sdrun.hires import hires_target, second_pass_schedule, upscale_first_pass
from sdrun.images import from_pixels, load_rgb, to_pixels
from sdrun.inpaint import Mask, load_mask, paste_unmasked
from sdrun.limits import DEFAULT_LIMITS, Limits
from sdrun.memory import (
    DEFAULT_POLICY,
    FAST_POLICY,
    LOW_MEMORY_POLICY,
    MemoryPolicy,
    Sessions,
    set_mmap_threshold,
)
from sdrun.model_facts import ModelFacts
from sdrun.networks import (
    LatentDistribution,
    TextEncoderGraph,
    UNetGraph,
    VaeDecoderGraph,
    VaeEncoderGraph,
)
from sdrun.progress import Progress, ProgressCallback
from sdrun.prompt_syntax import extra_networks, prompt_schedule
from sdrun.providers import ProviderRequest, create_session, provider_name, requested_providers
from sdrun.random_sources import NormalSource
from sdrun.request import GenerationRequest, prepare, settings_of
from sdrun.results import GeneratedImage, Result
from sdrun.samplers import SAMPLERS, KnownLatents, sample
from sdrun.samplers.prediction import Model
from sdrun.schedule import NoiseSchedule, ScheduleError
from sdrun.settings import GenerationSettings, HiresFix
from sdrun.stopping import StopSignal
from sdrun.text_conditioning import check_prompt_length, prompt_embeddings
from sdrun.tiled_vae import decode_tiled
from sdrun.tokenizer import CLIPTokenizer, TokenizerError

# callback(step, total, latents) after each sampler step; returning True stops the run.
StepCallback = Callable[[int, int, np.ndarray], bool | None]
# Automatic tiled VAE decoding above this many image pixels: a whole 768x768 decode already holds
# about 6 GB of activations in the SD 1.x decoder (2.7 GB at 512x512), and it grows with the area.
AUTO_TILE_PIXELS = 768 * 768
# Sessions the default policy opens at load, with the chosen VAE decoder (the VAE encoder waits for an
# image-to-image call).
TEXT_TO_IMAGE_GRAPHS = (TEXT_ENCODER, UNET)
# What a generation call takes: settings (or a prompt and settings as keywords), or a prepared request.
Call = GenerationSettings | GenerationRequest | str


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
    Each graph opens as its network's wrapper (sdrun.networks), which reads its inputs then. `facts` is
    what the folder says about the model (sdrun.model_facts), `defaults` its generation defaults.

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
        self.limits = limits
        self.defaults = GenerationDefaults.from_manifest(folder.manifest)
        self.vae = self.defaults.vae if vae is None else vae
        self.facts = ModelFacts.read(folder, self.vae, tokenizer.max_length)
        self._providers = providers
        self.sessions = Sessions(self._open_graph, keep=memory.keep_sessions, trim_heap=memory.trim_heap)
        if memory.mmap_threshold is not None:
            set_mmap_threshold(memory.mmap_threshold)
        self.provider: str | None = None  # set when the first session opens
        # Reentrant, so that a thread interleaving two of its own generate_each calls is not deadlocked.
        self._lock = threading.RLock()
        self.closed = False

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
        keep = memory.keep_sessions
        graphs = (*TEXT_TO_IMAGE_GRAPHS, pipeline.facts.vae_decoder) if keep else (TEXT_ENCODER,)
        pipeline.sessions.preload(*graphs)
        return pipeline

    def _open_graph(self, component: str) -> Graph:
        """A session on `component`'s graph, wrapped as the network it is; refused once the pipeline is
        closed (every stage method opens its graph through here, so none reopens a released session)."""
        if self.closed:
            raise SdrunError("this pipeline is closed: load the model folder again to use it")
        session = create_session(self.folder.graph(component), self._providers, self.memory.session_options())
        if self.provider is None:
            self.provider = provider_name(session)
        facts = self.facts
        if component == TEXT_ENCODER:
            return TextEncoderGraph(component, session)
        if component == UNET:
            return UNetGraph(component, session, facts.guidance_embedding_dim)
        if component == facts.vae_decoder:
            return VaeDecoderGraph(component, session, facts.vae_factor)
        tiny = component == TINY_VAE_ENCODER
        return VaeEncoderGraph(component, session, facts.latent_channels, facts.vae_factor, tiny)

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
        return self._network(UNET, UNetGraph).batch_of_one

    def encode_prompt(
        self,
        prompt: str,
        negative_prompt: str,
        guidance_scale: float,
        *,
        emphasis: str = "Original",
        pad_conds: bool = False,
        steps: int | None = None,
        hires_steps: int | None = None,
    ) -> PromptEmbeddings:
        """The UNet's contexts for both prompts, as AUTOMATIC1111 makes them (sdrun.text_conditioning:
        chunks of 75 tokens, `emphasis`, `pad_conds`; prompt editing and alternation over `steps` model
        calls when given, else the prompts as written; with `hires_steps`, over a hires pass of that many
        after `steps`, sdrun.prompt_syntax.prompt_schedule; "<lora:...>"-style tags taken out of the
        prompt);
        the negative one is skipped at guidance 1 and under an LCM UNet (whose guidance is an input, not
        an unconditional pass)."""
        with_negative = unconditional_pass(guidance_scale, self.facts.guidance_embedding_dim)
        # The web UI takes extra-network tags out of the prompt (not the negative one) before reading it.
        prompt = extra_networks(prompt)[0]

        def schedule(text: str) -> list[tuple[int, str]]:
            return [(1, text)] if steps is None else prompt_schedule(text, steps, hires_steps)

        with self.sessions.use(TEXT_ENCODER):
            return prompt_embeddings(
                self.tokenizer,
                self._network(TEXT_ENCODER, TextEncoderGraph).encode,
                schedule(prompt),
                schedule(negative_prompt) if with_negative else None,
                emphasis=emphasis,
                pad_conds=pad_conds,
            )

    def encode_image(self, image: Image.Image) -> LatentDistribution:
        """The VAE encoder's latent distribution for an RGB image whose sides are multiples of 8
        (text-to-image never needs the encoder: it opens on first use). TAESD's encoder gives a
        distribution of zero spread: its noise is still drawn, so the draws stay those of the contract."""
        return self.encode_pixels(to_pixels(image))

    def encode_pixels(self, pixels: np.ndarray) -> LatentDistribution:
        """`encode_image` for pixels [1, 3, H, W] in [-1, 1] (a masked image is not 8-bit)."""
        with self.sessions.use(self.facts.vae_encoder):
            return self._network(self.facts.vae_encoder, VaeEncoderGraph).encode(pixels)

    def guided_model(
        self,
        embeddings: PromptEmbeddings,
        guidance_scale: float,
        conditioning: np.ndarray | None = None,
        before_pass: Callable[[], None] | None = None,
    ) -> Model:
        """model(x, t) for the samplers on this pipeline's UNet (sdrun.guidance.guided_model)."""
        unet = self._network(UNET, UNetGraph)
        for context in embeddings.contexts:
            unet.check_context(context.shape[1])
        return guided_model(
            unet.predict,
            embeddings,
            guidance_scale,
            guidance_embedding_dim=self.facts.guidance_embedding_dim,
            sequential=embeddings.unconditional is not None and self.sequential_guidance,
            conditioning=conditioning,
            before_pass=before_pass,
        )

    def denoise(
        self,
        embeddings: PromptEmbeddings,
        noise: np.ndarray,
        rng: NormalSource,
        *,
        steps: int,
        guidance_scale: float,
        sampler: str,
        init_latents: np.ndarray | None = None,
        strength: float = 1.0,
        eta: float | None = None,
        schedule_type: str | None = None,
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
            if self.facts.inpainting:
                conditioning = np.concatenate([mask, masked_latents], axis=1)
            else:
                known = KnownLatents(init_latents, mask)
            if strength == 1.0:
                init_latents = None
        with self.sessions.use(UNET):
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
                eta=eta,
                callback=callback,
                known=known,
                schedule_type=schedule_type,
            )

    def decode(self, latents: np.ndarray) -> list[Image.Image]:
        """Scaled latents -> images, one VAE call per image to bound its memory, in tiles when the
        memory policy asks for them (or, by default, beyond 768x768 pixels)."""
        with self.sessions.use(self.facts.vae_decoder):
            return [self._decode_one(item[None]) for item in latents]

    def _decode_one(self, latent: np.ndarray, stop: StopSignal | None = None) -> Image.Image:
        return from_pixels(self._decode_pixels(latent, stop))

    def _decode_pixels(self, latent: np.ndarray, stop: StopSignal | None = None) -> np.ndarray:
        decoder = self._network(self.facts.vae_decoder, VaeDecoderGraph)

        def decode(latents: np.ndarray) -> np.ndarray:
            if stop is not None:
                stop.check()  # before the whole decode, or before each tile
            return decoder.decode(latents)

        factor = self.facts.vae_factor
        item = latent / self.facts.latent_scale
        tiled = self.memory.tiled_vae
        if tiled is None:
            tiled = item.shape[2] * item.shape[3] * factor**2 > AUTO_TILE_PIXELS
        return decode_tiled(decode, item, factor) if tiled else decode(item)

    def prepare(
        self, call: GenerationSettings | str, negative_prompt: str | None = None, **fields: Any
    ) -> GenerationRequest:
        """A call's settings (GenerationSettings, or a prompt with setting keywords) checked and completed
        without running any network (sdrun.request.prepare): a SettingsError here is the one the call would
        raise. A server prepares a request before queueing it, and the job runs that very request."""
        settings = settings_of(call, negative_prompt, fields)
        request = prepare(settings, self.facts, self.defaults, self.limits, self.schedule)
        for text in (request.prompt, request.negative_prompt):
            check_prompt_length(self.tokenizer, prompt_schedule(text, request.steps), request.emphasis)
        return request

    def generate(
        self,
        call: Call,
        negative_prompt: str | None = None,
        *,
        callback: StepCallback | None = None,
        progress: ProgressCallback | None = None,
        stop: StopSignal | None = None,
        **fields: Any,
    ) -> Result:
        """Text-to-image, image-to-image when `init_image` is given, inpainting with a `mask` too: the
        images of `generate_each` (which says what each setting does), all kept in the Result."""
        images, made, stopped = [], [], False
        stages = {"callback": callback, "progress": progress, "stop": stop}
        for generated in self.generate_each(call, negative_prompt, **stages, **fields):
            images.append(generated.image)
            made.append(generated.settings)
            stopped = generated.stopped
        return Result(images, made, stopped)

    @_serialized
    def generate_each(
        self,
        call: Call,
        negative_prompt: str | None = None,
        *,
        callback: StepCallback | None = None,
        progress: ProgressCallback | None = None,
        stop: StopSignal | None = None,
        **fields: Any,
    ) -> Iterator[GeneratedImage]:
        """Text-to-image, or image-to-image when `init_image` is given; each image is yielded as soon as
        it is decoded, so that a caller can write it and let it go. `call` is GenerationSettings, a prompt
        with the settings as keywords (`generate_each("a cube", seed=1, steps=20)`), or a request that
        `prepare` made (run as it is, with its seed).

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

        `hires` (text-to-image only) runs AUTOMATIC1111's hires fix on each image before it is decoded
        (sdrun.hires): the first pass's latents upscaled, then image-to-image at the target size with a
        fresh draw of the image's seed at that size; the steps, callback and progress count both passes.
        """
        if isinstance(call, GenerationRequest):
            if fields or negative_prompt is not None:
                raise SettingsError("a prepared request runs as it is: change the settings and prepare again")
            request = call
        else:
            request = self.prepare(call, negative_prompt, **fields)
        facts = self.facts
        # Prompt editing counts model calls: two a step for the web UI's second-order samplers.
        embeddings = self.encode_prompt(
            request.prompt,
            request.negative_prompt,
            request.guidance_scale,
            emphasis=request.emphasis,
            pad_conds=request.pad_conds,
            steps=request.steps * SAMPLERS[request.sampler].model_calls,
        )
        size = (request.width, request.height)
        init = load_rgb(request.image, size) if request.image is not None else None
        mask = load_mask(request.mask, size, request.mask_blur or 0) if request.mask is not None else None
        if mask is None and facts.inpainting:
            mask = Mask.everywhere(size)
        # An inpainting UNet at full strength starts from pure noise and sees the init image only masked.
        init_unused = facts.inpainting and request.strength == 1.0
        if stop is not None:
            stop.check()
        distribution = self.encode_image(init) if init is not None and not init_unused else None
        masked_distribution = None
        if facts.inpainting and mask is not None:
            pixels = to_pixels(init) if init is not None else np.zeros((1, 3, size[1], size[0]), np.float32)
            masked_distribution = self.encode_pixels(mask.masked(pixels))
        sampled = self._sample_images(
            embeddings,
            distribution,
            masked_distribution,
            None if mask is None else mask.latent(facts.vae_factor),
            facts.latent_shape(request.width, request.height),
            request.seed,
            request.seed_features,
            request.num_images,
            callback,
            progress,
            stop,
            later_steps=0 if request.hires is None else _or(request.hires.steps, request.steps),
            steps=request.steps,
            guidance_scale=request.guidance_scale,
            sampler=request.sampler,
            strength=1.0 if request.strength is None else request.strength,
            eta=request.eta,
            schedule_type=request.schedule_type,
        )
        if request.hires is not None:
            sampled = self._hires_images(sampled, request, request.hires, callback, progress, stop)
        if not self.memory.keep_sessions:
            # Every image is sampled before any is decoded, so that each session opens once per call;
            # the latents waiting for the decoder are small.
            with self.sessions.use(UNET):
                sampled = iter(list(sampled))
        with self.sessions.use(facts.vae_decoder):
            for index, (latents, stopped) in enumerate(sampled):
                settings = request.image_settings(
                    index, self.folder.name, facts.clip_skip, model_hash(self.folder.facts.checkpoint_sha256)
                )
                picture = self._decode_one(latents, stop)
                if request.overlay and request.mask is not None and init is not None and mask is not None:
                    picture = paste_unmasked(picture, init, mask)
                yield GeneratedImage(picture, settings, stopped)

    def _sample_images(
        self,
        embeddings: PromptEmbeddings,
        distribution: LatentDistribution | None,
        masked_distribution: LatentDistribution | None,
        latent_mask: np.ndarray | None,
        latent_shape: tuple[int, ...],
        seed: int,
        features: SeedFeatures,
        num_images: int,
        callback: StepCallback | None,
        progress: ProgressCallback | None,
        stop: StopSignal | None,
        later_steps: int = 0,
        **sampling: Any,
    ) -> Iterator[tuple[np.ndarray, bool]]:
        """(latents, stopped) of image i, from the draws of its seeds (`features.image_seeds`; sdrun.draws);
        stops after the image during which the callback asked to or `stop` was interrupted. The callback and
        progress count `later_steps` more steps of each image after these (a hires pass's)."""
        for index in range(num_images):
            image_seed, subseed = features.image_seeds(seed, index)
            draws = draw_image(
                image_seed,
                latent_shape,
                self.facts.latent_scale,
                distribution,
                masked_distribution if latent_mask is not None else None,
                inpainting=latent_mask is not None,
                features=features,
                subseed=subseed,
                vae_factor=self.facts.vae_factor,
            )
            stopped = False

            def on_step(step: int, total: int, latents: np.ndarray, index: int = index) -> bool:
                nonlocal stopped
                stopped = _report(callback, progress, index, num_images, step, total + later_steps, latents)
                return stopped

            with self.sessions.use(UNET):
                latents = self.denoise(
                    embeddings,
                    draws.noise,
                    draws.rng,
                    init_latents=draws.init_latents,
                    mask=latent_mask,
                    masked_latents=draws.masked_latents,
                    callback=on_step,
                    stop=stop,
                    **sampling,
                )
            stopped = stopped or (stop is not None and stop.interrupted.is_set())
            _check_finite(latents, sampling["sampler"])
            yield latents, stopped
            if stopped:
                return

    def _hires_images(
        self,
        sampled: Iterator[tuple[np.ndarray, bool]],
        request: GenerationRequest,
        hires: HiresFix,
        callback: StepCallback | None,
        progress: ProgressCallback | None,
        stop: StopSignal | None,
    ) -> Iterator[tuple[np.ndarray, bool]]:
        """Each first pass's (latents, stopped) through the hires fix's second pass; an image stopped in its
        first pass keeps its first pass's latents, as the web UI's sample_hr_pass returns them."""
        facts = self.facts
        steps = _or(hires.steps, request.steps)
        # The web UI encodes the hires prompts on their own schedule (prompt editing counts on over the
        # hires steps), even when they are the first pass's.
        embeddings = self.encode_prompt(
            _or(hires.prompt, request.prompt),
            _or(hires.negative_prompt, request.negative_prompt),
            request.guidance_scale,
            emphasis=request.emphasis,
            pad_conds=request.pad_conds,
            steps=request.steps * SAMPLERS[request.sampler].model_calls,
            hires_steps=steps * SAMPLERS[hires.sampler].model_calls,
        )
        schedule_steps, strength = second_pass_schedule(steps, hires.strength, hires.sampler)
        target = hires_target(request.width, request.height, hires.scale, hires.resize, facts.vae_factor)
        eta = request.eta if SAMPLERS[hires.sampler].eta_default is not None else None

        def decode(latents: np.ndarray) -> np.ndarray:
            with self.sessions.use(facts.vae_decoder):
                return self._decode_pixels(latents, stop)

        def encode(picture: Image.Image) -> np.ndarray:
            return self.encode_image(picture).mean * facts.latent_scale

        for index, (first, stopped) in enumerate(sampled):
            if stopped:
                yield first, stopped
                return
            latents = upscale_first_pass(first, target, hires.upscaler, facts.vae_factor, decode, encode)
            # The web UI's fresh ImageRNG for the image's seeds at the new size: its first draw is the noise.
            image_seed, subseed = request.seed_features.image_seeds(request.seed, index)
            features = request.seed_features
            noise, rng = image_noise(image_seed, subseed, latents.shape, features, facts.vae_factor)

            def on_step(step: int, total: int, latents: np.ndarray, index: int = index) -> bool:
                nonlocal stopped
                done, all_steps = request.steps + step, request.steps + total
                stopped = _report(callback, progress, index, request.num_images, done, all_steps, latents)
                return stopped

            with self.sessions.use(UNET):
                latents = self.denoise(
                    embeddings,
                    noise,
                    rng,
                    steps=schedule_steps,
                    guidance_scale=request.guidance_scale,
                    sampler=hires.sampler,
                    schedule_type=hires.schedule_type,
                    init_latents=latents,
                    strength=strength,
                    eta=eta,
                    callback=on_step,
                    stop=stop,
                )
            stopped = stopped or (stop is not None and stop.interrupted.is_set())
            _check_finite(latents, hires.sampler)
            yield latents, stopped
            if stopped:
                return


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def _report(
    callback: StepCallback | None,
    progress: ProgressCallback | None,
    index: int,
    num_images: int,
    step: int,
    total: int,
    latents: np.ndarray,
) -> bool:
    """Step `step` (from 0) of `total` of image `index` to the callback and progress; whether either asked to
    stop."""
    asked = callback is not None and callback(index * total + step, num_images * total, latents)
    told = progress is not None and progress(Progress(index, num_images, step + 1, total))
    return bool(asked) or bool(told)


def _check_finite(latents: np.ndarray, sampler: str) -> None:
    if not np.isfinite(latents).all():
        raise GraphOutputError(
            f"sampling with {sampler} diverged to NaN or infinite latents; nothing was "
            "written (try fewer steps, a smaller guidance scale or another sampler)"
        )

