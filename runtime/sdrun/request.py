"""The one place where a call's settings are checked and completed: `prepare` turns GenerationSettings into
a GenerationRequest, or refuses them with a one-line SettingsError saying what to change, without running
any network. It is a function of plain data (the settings, what the model folder says, its defaults, the
limits and the noise schedule), so the CLI, the servers and the library refuse the same things alike.
"""

import dataclasses
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sdrun.a1111 import EMPHASIS_MODES
from sdrun.defaults import GenerationDefaults
from sdrun.draws import SeedFeatures
from sdrun.errors import SettingsError, quoted
from sdrun.guidance import unconditional_pass
from sdrun.hires import check_upscaler, hires_target, second_pass_schedule
from sdrun.images import fit_within, open_image, oriented_size
from sdrun.inpaint import DEFAULT_MASK_BLUR, MAX_MASK_BLUR
from sdrun.limits import MAX_GUIDANCE, MAX_PROMPT_CHARACTERS, Limits
from sdrun.model_facts import ModelFacts
from sdrun.prompt_syntax import check_prompt_syntax
from sdrun.random_sources import DEFAULT_RANDOM_SOURCE, RANDOM_SOURCES
from sdrun.samplers import SAMPLERS, first_step, make_sampler, resolve_schedule_type
from sdrun.schedule import NoiseSchedule
from sdrun.settings import MAX_SEED, GenerationSettings, HiresFix, ImageSettings, check_seed, random_seed

# The web UI's slider stops at 4; a larger scale is bounded by the pixel and work limits anyway.
MAX_HIRES_SCALE = 16.0


@dataclass(frozen=True)
class GenerationRequest:
    """A call's settings as `prepare` checked and completed them; `image` is the opened init image (None
    for text-to-image, and then `strength` is None too), `mask` the opened mask (None without one, and
    then `mask_blur` is None too); `hires` the hires fix checked, its sampler completed and its prompts None
    where they are the first pass's (`width` and `height` are the first pass's)."""

    prompt: str
    negative_prompt: str
    steps: int
    guidance_scale: float
    sampler: str
    eta: float | None
    seed: int
    width: int
    height: int
    num_images: int
    image: Image.Image | None
    strength: float | None
    mask: Image.Image | None = None
    mask_blur: int | None = None
    overlay: bool = True
    random_source: str = DEFAULT_RANDOM_SOURCE
    eta_noise_seed_delta: int = 0
    subseed: int | None = None
    subseed_strength: float = 0.0
    seed_resize_from: tuple[int, int] | None = None
    emphasis: str = "Original"
    pad_conds: bool = False
    hires: HiresFix | None = None
    schedule_type: str | None = None

    @property
    def seed_features(self) -> SeedFeatures:
        """The random source and seed features the draws of each image follow (sdrun.draws)."""
        return SeedFeatures(
            self.random_source,
            self.eta_noise_seed_delta,
            self.subseed,
            self.subseed_strength,
            self.seed_resize_from,
        )

    def image_settings(self, index: int, model: str, clip_skip: int, model_hash: str = "") -> ImageSettings:
        """The settings that made image `index` of this call (its seed is the call's + index, or with a
        variation strength the call's, and its subseed the call's + index: SeedFeatures.image_seeds)."""
        seed, subseed = self.seed_features.image_seeds(self.seed, index)
        return ImageSettings(
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            steps=self.steps,
            sampler=self.sampler,
            guidance_scale=self.guidance_scale,
            seed=seed,
            width=self.width,
            height=self.height,
            model=model,
            strength=self.strength,
            mask_blur=self.mask_blur,
            overlay=self.overlay,
            clip_skip=clip_skip,
            eta=self.eta,
            model_hash=model_hash,
            # None stands for sdrun's default source in recorded settings, as the PNG text reads back.
            random_source=None if self.random_source == DEFAULT_RANDOM_SOURCE else self.random_source,
            eta_noise_seed_delta=self.eta_noise_seed_delta,
            subseed=subseed if self.subseed_strength else None,
            subseed_strength=self.subseed_strength,
            seed_resize_from=self.seed_resize_from,
            emphasis=self.emphasis,
            pad_conds=self.pad_conds,
            hires=self.hires,
            schedule_type=self.schedule_type,
        )


class NegativePromptIgnoredWarning(UserWarning):
    """A negative prompt was given where it has no effect: guidance off (scale 1), or an LCM UNet (which
    takes the guidance scale as an input and has no unconditional pass)."""


def prepare(
    settings: GenerationSettings,
    facts: ModelFacts,
    defaults: GenerationDefaults,
    limits: Limits,
    schedule: NoiseSchedule,
) -> GenerationRequest:
    """`settings` checked against the model and `limits` and completed from `defaults`: the request a
    generation runs, or the SettingsError that it would raise (an init image and a mask are opened, not
    decoded)."""
    given = settings
    if given.mask is not None and given.init_image is None:
        raise SettingsError("a mask marks what to repaint in an init image: give the init image too")
    if given.strength is not None and given.init_image is None:
        raise SettingsError("strength applies to image-to-image only: give an init image too")
    if given.mask_blur is not None and given.mask is None:
        raise SettingsError("a mask blur applies to inpainting only: give a mask too")
    for what, source in (("init image", given.init_image), ("mask", given.mask)):
        if source is not None and not isinstance(source, Image.Image | str | Path):
            raise SettingsError(f"the {what} must be a PIL image or a file path, not {type(source).__name__}")
    if not isinstance(given.overlay, bool):
        raise SettingsError(f"overlay must be True or False, not {quoted(given.overlay)}")
    if given.emphasis not in EMPHASIS_MODES:
        modes = ", ".join(EMPHASIS_MODES)
        raise SettingsError(f"emphasis {quoted(given.emphasis)} is unknown: give one of {modes}")
    if not isinstance(given.pad_conds, bool):
        raise SettingsError(f"pad_conds must be True or False, not {quoted(given.pad_conds)}")
    mask_blur = _whole(DEFAULT_MASK_BLUR if given.mask_blur is None else given.mask_blur, "mask blur", 0)
    if mask_blur > MAX_MASK_BLUR:
        raise SettingsError(f"mask blur {mask_blur} is out of range: give 0 to {MAX_MASK_BLUR} pixels")
    prompt = _check_prompt(given.prompt, "prompt")
    negative_prompt = _check_prompt(given.negative_prompt, "negative prompt")
    steps = _whole(_or(given.steps, defaults.steps), "steps", 1)
    check_prompt_syntax(prompt, steps, "prompt", stacklevel=3)
    check_prompt_syntax(negative_prompt, steps, "negative prompt", stacklevel=3)
    guidance_scale = _finite(
        _or(given.guidance_scale, defaults.guidance_scale), "guidance scale", -MAX_GUIDANCE, MAX_GUIDANCE
    )
    two_passes = unconditional_pass(guidance_scale, facts.guidance_embedding_dim)
    if negative_prompt and not two_passes:
        where = "under an LCM UNet" if facts.guidance_embedding_dim is not None else "at guidance 1"
        warnings.warn(
            f"the negative prompt is ignored {where} (one UNet pass a step, with no unconditional "
            "prediction to steer away from)",
            NegativePromptIgnoredWarning,
            stacklevel=3,
        )
    sampler = _or(given.sampler, defaults.sampler)
    strength = _finite(_or(given.strength, defaults.strength), "strength", 0.0, 1.0)
    num_images = _whole(given.num_images, "the number of images", 1)
    limits.check_counts(num_images, steps)
    seed = random_seed(num_images) if given.seed is None else check_seed(given.seed, num_images)
    width, height, image = given.width, given.height, None
    if given.init_image is not None:
        image = open_image(given.init_image, limits.max_init_pixels)
        fitted = fit_within(*oriented_size(image), facts.default_size**2, facts.size_multiple)
        if min(fitted) < facts.size_multiple and (width is None or height is None):
            raise SettingsError(
                f"init image is {image.width}x{image.height}, smaller than {facts.size_multiple} pixels a "
                "side; give a larger image or the width and height to resize it to"
            )
        width, height = _or(width, fitted[0]), _or(height, fitted[1])
    mask = None if given.mask is None else open_image(given.mask, limits.max_init_pixels, "mask")
    width, height = _or(width, facts.default_size), _or(height, facts.default_size)
    eta = None if given.eta is None else _finite(given.eta, "eta", -MAX_GUIDANCE, MAX_GUIDANCE)
    img2img_strength = strength if image is not None else 1.0
    made = make_sampler(sampler, schedule, steps, eta, img2img_strength, given.schedule_type)
    schedule_type = resolve_schedule_type(sampler, given.schedule_type)
    # The steps the sampler runs: A1111's DDIM runs more than `steps` at some step counts.
    steps_run = len(made.timesteps) - (first_step(steps, strength, sampler) if image is not None else 0)
    _check_size(width, height, facts)
    limits.check_size(int(width), int(height))
    passes = (2 if two_passes else 1) * SAMPLERS[sampler].model_calls
    hires, second = None, None
    if given.hires is not None:
        hires = _check_hires(given.hires, image is not None, prompt, negative_prompt, sampler, steps, facts)
        # The web UI's "Use same scheduler": the first pass's schedule type, if the hires sampler takes one.
        hires_schedule = _or(hires.schedule_type, given.schedule_type)
        hires = dataclasses.replace(hires, schedule_type=resolve_schedule_type(hires.sampler, hires_schedule))
        hires_steps = _or(hires.steps, steps)
        schedule_steps, run_strength = second_pass_schedule(hires_steps, hires.strength, hires.sampler)
        hires_eta = eta if SAMPLERS[hires.sampler].eta_default is not None else None
        make_sampler(hires.sampler, schedule, schedule_steps, hires_eta, run_strength, hires.schedule_type)
        first_step(schedule_steps, run_strength, hires.sampler)  # a txt2img-only one: before the first pass
        limits.check_counts(num_images, hires_steps)
        final = hires_target(int(width), int(height), hires.scale, hires.resize, facts.vae_factor)
        limits.check_size(*final.upscale_to)  # upscaled before it is cropped
        final_width, final_height = final.size(facts.vae_factor)
        _check_size(final_width, final_height, facts, "the hires fix's target ")
        limits.check_size(final_width, final_height)
        second = (hires_steps * SAMPLERS[hires.sampler].model_calls, final_width, final_height)
    limits.check_work(num_images, steps_run, passes, int(width), int(height), facts.vae_factor, second)
    subseed_strength = _finite(given.subseed_strength, "variation seed strength", 0.0, 1.0)
    subseed = given.subseed
    if subseed is not None or subseed_strength != 0:
        subseed = random_seed(num_images) if subseed is None else _check_subseed(subseed, num_images)
    return GenerationRequest(
        prompt=prompt,
        negative_prompt=negative_prompt,
        steps=steps,
        guidance_scale=guidance_scale,
        sampler=sampler,
        eta=None if eta == SAMPLERS[sampler].eta_default else eta,
        seed=seed,
        width=int(width),
        height=int(height),
        num_images=num_images,
        image=image,
        strength=strength if image is not None else None,
        mask=mask,
        mask_blur=mask_blur if mask is not None else None,
        overlay=given.overlay,
        random_source=_random_source(given.random_source),
        eta_noise_seed_delta=_eta_noise_seed_delta(given.eta_noise_seed_delta),
        subseed=subseed,
        subseed_strength=subseed_strength,
        seed_resize_from=_seed_resize_from(given.seed_resize_from, facts, limits),
        emphasis=given.emphasis,
        pad_conds=given.pad_conds,
        hires=hires,
        schedule_type=schedule_type,
    )


def _check_hires(
    hires: object,
    image_to_image: bool,
    prompt: str,
    negative_prompt: str,
    sampler: str,
    steps: int,
    facts: ModelFacts,
) -> HiresFix:
    """The hires fix's settings checked (its target size is checked by the caller), with its sampler
    completed and its prompts None where they are the first pass's (the web UI records them only then)."""
    if not isinstance(hires, HiresFix):
        raise SettingsError(f"hires must be a HiresFix, not {type(hires).__name__}")
    if image_to_image:
        raise SettingsError(
            "the hires fix is a second pass of text-to-image: leave it out with an init image"
        )
    if facts.inpainting:
        raise SettingsError("the hires fix needs a plain UNet; this folder's is an inpainting one")
    scale = _finite(hires.scale, "hires scale", 1.0, MAX_HIRES_SCALE)
    resize = hires.resize
    if resize is not None:
        if not isinstance(resize, tuple) or len(resize) != 2:
            raise SettingsError(f"hires resize must be (width, height), not {quoted(resize)}")
        resize = (_whole(resize[0], "hires resize width", 0), _whole(resize[1], "hires resize height", 0))
    hires_steps = None if hires.steps is None else _whole(hires.steps, "hires steps", 1)
    strength = _finite(hires.strength, "hires strength", 0.0, 1.0)
    if strength == 0.0:
        raise SettingsError("hires strength 0 leaves no step to run: give a strength above 0, up to 1")
    hires_prompt, hires_negative = None, None
    if hires.prompt is not None:
        hires_prompt = _check_prompt(hires.prompt, "hires prompt")
        check_prompt_syntax(hires_prompt, steps, "hires prompt", stacklevel=4)
    if hires.negative_prompt is not None:
        hires_negative = _check_prompt(hires.negative_prompt, "hires negative prompt")
        check_prompt_syntax(hires_negative, steps, "hires negative prompt", stacklevel=4)
    return HiresFix(
        scale=scale,
        resize=None if resize == (0, 0) else resize,
        upscaler=check_upscaler(hires.upscaler),
        steps=hires_steps,
        strength=strength,
        prompt=None if hires_prompt == prompt else hires_prompt,
        negative_prompt=None if hires_negative == negative_prompt else hires_negative,
        sampler=_or(hires.sampler, sampler),
        schedule_type=hires.schedule_type,
    )


def _random_source(name: object) -> str:
    """A source name (any case, as the web UI writes GPU, CPU and NV), or None for sdrun's default."""
    if name is None:
        return DEFAULT_RANDOM_SOURCE
    if not isinstance(name, str) or name.lower() not in RANDOM_SOURCES:
        raise SettingsError(
            f"random source {quoted(name)} is unknown: give one of {', '.join(RANDOM_SOURCES)}"
        )
    return name.lower()


def _eta_noise_seed_delta(delta: object) -> int:
    if isinstance(delta, bool) or not isinstance(delta, int | np.integer) or not 0 <= delta <= MAX_SEED:
        raise SettingsError(
            f"eta noise seed delta (ENSD) must be a whole number from 0 to {MAX_SEED}, not {quoted(delta)}"
        )
    return int(delta)


def _check_subseed(subseed: object, num_images: int) -> int:
    try:
        return check_seed(subseed, num_images)
    except SettingsError as error:
        raise SettingsError(f"variation {error}") from None


def _seed_resize_from(size: object, facts: ModelFacts, limits: Limits) -> tuple[int, int] | None:
    """(width, height) in pixels to draw the noise at, each at least one latent pixel, or None."""
    if size is None:
        return None
    sides = tuple(size) if isinstance(size, tuple | list) else ()
    low = facts.vae_factor
    if len(sides) != 2 or not all(
        not isinstance(side, bool) and isinstance(side, int | np.integer) and side >= low for side in sides
    ):
        raise SettingsError(
            f"seed resize from must be (width, height), whole numbers of pixels >= {low}, not {quoted(size)}"
        )
    width, height = int(sides[0]), int(sides[1])
    limits.check_size(width, height)
    return width, height


def _or(value: object, default: object) -> object:
    return default if value is None else value


def _check_size(width: object, height: object, facts: ModelFacts, what: str = "") -> None:
    for name, side in (("height", height), ("width", width)):
        whole = not isinstance(side, bool) and isinstance(side, int | np.integer) and side > 0
        if not whole or side % facts.size_multiple:
            raise SettingsError(
                f"{what}{name} {quoted(side)} is not a positive multiple of {facts.size_multiple}, "
                f"which this model needs (e.g. {facts.default_size})"
            )


def _whole(value: object, name: str, low: int) -> int:
    """An integral setting (numpy integers too; bools are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise SettingsError(f"{name} must be a whole number >= {low}, not {quoted(value)}")
    return int(value)


def _finite(value: object, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
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
            "(a chunk of 75 tokens is about 300 characters)"
        )
    return text


def settings_of(
    call: GenerationSettings | str, negative_prompt: str | None, fields: dict[str, Any]
) -> GenerationSettings:
    """The settings of a call given as settings, or as a prompt, each with `fields` (setting keywords) over
    them."""
    settings = GenerationSettings(prompt=call) if isinstance(call, str) else call
    if not isinstance(settings, GenerationSettings):
        raise SettingsError(
            f"generate takes a prompt, GenerationSettings or a GenerationRequest, not {type(call).__name__}"
        )
    if negative_prompt is not None:
        fields = {**fields, "negative_prompt": negative_prompt}
    return settings.but(**fields) if fields else settings
