"""The one place where a call's settings are checked and completed: `prepare` turns GenerationSettings into
a GenerationRequest, or refuses them with a one-line SettingsError saying what to change, without running
any network. It is a function of plain data (the settings, what the model folder says, its defaults, the
limits and the noise schedule), so the CLI, the servers and the library refuse the same things alike.
"""

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sdrun.defaults import GenerationDefaults
from sdrun.errors import SettingsError, quoted
from sdrun.guidance import unconditional_pass
from sdrun.images import fit_within, open_image, oriented_size
from sdrun.inpaint import DEFAULT_MASK_BLUR, MAX_MASK_BLUR
from sdrun.limits import MAX_GUIDANCE, MAX_PROMPT_CHARACTERS, Limits
from sdrun.model_facts import ModelFacts
from sdrun.prompt_syntax import check_prompt_syntax
from sdrun.samplers import SAMPLERS, first_step, make_sampler
from sdrun.schedule import NoiseSchedule
from sdrun.settings import GenerationSettings, ImageSettings, check_seed, random_seed


@dataclass(frozen=True)
class GenerationRequest:
    """A call's settings as `prepare` checked and completed them; `image` is the opened init image (None
    for text-to-image, and then `strength` is None too), `mask` the opened mask (None without one, and
    then `mask_blur` is None too)."""

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

    def image_settings(self, index: int, model: str, clip_skip: int) -> ImageSettings:
        """The settings that made image `index` of this call (its seed is the call's + index)."""
        return ImageSettings(
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            steps=self.steps,
            sampler=self.sampler,
            guidance_scale=self.guidance_scale,
            seed=self.seed + index,
            width=self.width,
            height=self.height,
            model=model,
            strength=self.strength,
            mask_blur=self.mask_blur,
            overlay=self.overlay,
            clip_skip=clip_skip,
            eta=self.eta,
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
    make_sampler(sampler, schedule, steps, eta, strength if image is not None else 1.0)
    steps_run = steps - first_step(steps, strength, sampler) if image is not None else steps
    _check_size(width, height, facts)
    limits.check_size(int(width), int(height))
    passes = 2 if two_passes else 1
    limits.check_work(num_images, steps_run, passes, int(width), int(height), facts.vae_factor)
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
    )


def _or(value: object, default: object) -> object:
    return default if value is None else value


def _check_size(width: object, height: object, facts: ModelFacts) -> None:
    for name, side in (("height", height), ("width", width)):
        whole = not isinstance(side, bool) and isinstance(side, int | np.integer) and side > 0
        if not whole or side % facts.size_multiple:
            raise SettingsError(
                f"{name} {quoted(side)} is not a positive multiple of {facts.size_multiple}, "
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
            "(the text encoder reads the first 77 tokens, about 300 characters)"
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
