"""Generation settings as text, in the format of the AUTOMATIC1111 web UI's infotext (the `parameters` chunk
of its PNGs, the "generation data" civitai shows, its API's `infotexts`).

The text is the prompt, an optional "Negative prompt: ..." line, and one line of comma-separated
"Key: value" pairs; a value holding a comma, colon or newline is written as a JSON string:

    a red cube on a table
    Negative prompt: blurry
    Steps: 20, Sampler: Euler a, Schedule type: Uniform, CFG scale: 7.5, Seed: 1, Size: 512x512, Model: sd15

As in that format, leading and trailing spaces of each prompt line are not kept, and a prompt line that
starts with "Negative prompt:" cannot be told from the negative prompt.

A text to read settings from may come from anywhere: it is bounded, and the parser is linear in its input.
The keys are A1111's (sdrun.a1111); "Mask overlay" and "sdrun sampler" are sdrun's own.
"""

import json
import re
from collections.abc import Callable
from typing import TypeVar

from sdrun import a1111
from sdrun.errors import SettingsError, quoted
from sdrun.samplers import a1111_names, a1111_sampler
from sdrun.settings import MAX_SEED, ImageSettings

T = TypeVar("T")
_REQUIRED_KEYS = (a1111.STEPS, a1111.SAMPLER, a1111.CFG_SCALE, a1111.SEED, a1111.SIZE)
_ETA_KEYS = (a1111.ETA_DDIM, a1111.ETA)
# sdrun's own keys: inpainting without the init image pasted back; the sdrun sampler, where A1111's names
# for it stand for another (sdrun's diffusers-discretised euler_a is "Euler a", which reads as k_euler_a).
MASK_OVERLAY = "Mask overlay"
SDRUN_SAMPLER = "sdrun sampler"
# The web UI's longest texts (prompts with many LoRA and embedding tags) are a few kB.
MAX_PARAMETERS_CHARACTERS = 65_536
_WHOLE = re.compile(r"[0-9]{1,20}")
_DECIMAL = re.compile(r"-?[0-9]{1,20}(\.[0-9]{1,20})?([eE][-+]?[0-9]{1,3})?")
_SIZE = re.compile(r"\s*([0-9]{1,6})\s*x\s*([0-9]{1,6})\s*")


def _quote(value: object) -> str:
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",:\n") else text


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] == '"':
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    return text


def _number(value: float) -> str:
    """7.0 -> "7", 7.5 -> "7.5", as the web UI writes CFG scales."""
    return f"{value:g}" if float(value).is_integer() else repr(float(value))


def format_parameters(settings: ImageSettings) -> str:
    """The `parameters` text for one image."""
    label, schedule = a1111_names(settings.sampler, settings.schedule_type)
    own = a1111_sampler(label, schedule)[0] != settings.sampler
    pairs = {
        a1111.STEPS: settings.steps,
        a1111.SAMPLER: label,
        a1111.SCHEDULE_TYPE: schedule,
        a1111.CFG_SCALE: _number(settings.guidance_scale),
        a1111.SEED: settings.seed,
        a1111.SIZE: f"{settings.width}x{settings.height}",
        a1111.MODEL: settings.model or None,
        a1111.DENOISING_STRENGTH: None if settings.strength is None else _number(settings.strength),
        a1111.MASK_BLUR: settings.mask_blur,
        MASK_OVERLAY: "off" if settings.mask_blur is not None and not settings.overlay else None,
        a1111.CLIP_SKIP: settings.clip_skip if settings.clip_skip > 1 else None,
        _eta_key(label): None if settings.eta is None else _number(settings.eta),
        SDRUN_SAMPLER: settings.sampler if own else None,
    }
    line = ", ".join(f"{key}: {_quote(value)}" for key, value in pairs.items() if value is not None)
    negative = f"\n{a1111.NEGATIVE_PREFIX} {settings.negative_prompt}" if settings.negative_prompt else ""
    return f"{settings.prompt}{negative}\n{line}".strip()


def _parse_pairs(line: str) -> dict[str, str]:
    """The "Key: value" pairs of the settings line, scanned once from left to right: a value is a JSON
    string (escapes allowed) or anything up to the next comma."""
    pairs: dict[str, str] = {}
    position, end = 0, len(line)
    while position < end:
        colon = line.find(":", position)
        if colon < 0:
            break
        key = line[position:colon].strip()
        position = colon + 1
        while position < end and line[position] == " ":
            position += 1
        if position < end and line[position] == '"':
            closing = _closing_quote(line, position)
            value = _unquote(line[position : closing + 1])
            comma = line.find(",", closing + 1)
        else:
            comma = line.find(",", position)
            value = line[position : end if comma < 0 else comma].strip()
        position = end if comma < 0 else comma + 1
        if key:
            pairs[key] = value
    return pairs


def _closing_quote(line: str, opening: int) -> int:
    """Index of the quote that closes the JSON string opened at `opening` (the line's end if none)."""
    position = opening + 1
    while position < len(line):
        if line[position] == "\\":
            position += 2
        elif line[position] == '"':
            return position
        else:
            position += 1
    return len(line) - 1


def _integer(pairs: dict[str, str], key: str) -> int:
    if not _WHOLE.fullmatch(pairs[key]):
        raise SettingsError(f"parameters field {key}: {quoted(pairs[key])} is not a whole number")
    return int(pairs[key])


def _seed(pairs: dict[str, str]) -> int:
    seed = _integer(pairs, a1111.SEED)
    if seed > MAX_SEED:
        raise SettingsError(
            f"parameters field Seed: {seed} is above {MAX_SEED}, the largest seed sdrun takes"
        )
    return seed


def _float(pairs: dict[str, str], key: str) -> float:
    if not _DECIMAL.fullmatch(pairs[key]):
        raise SettingsError(f"parameters field {key}: {quoted(pairs[key])} is not a number")
    return float(pairs[key])


def _switch(pairs: dict[str, str], key: str) -> bool:
    if pairs[key] not in ("on", "off"):
        raise SettingsError(f"parameters field {key}: {quoted(pairs[key])} is not on or off")
    return pairs[key] == "on"


def parse_parameters(text: str) -> ImageSettings:
    """Read settings back from a `parameters` text (ours or the web UI's); fields sdrun has no use for,
    such as "Model hash" or "Version", are ignored."""
    if len(text) > MAX_PARAMETERS_CHARACTERS:
        raise SettingsError(
            f"the parameters text has {len(text):,} characters, more than the {MAX_PARAMETERS_CHARACTERS:,} "
            "that sdrun reads"
        )
    *lines, last = text.strip().split("\n")
    pairs = _parse_pairs(last)
    missing = [key for key in _REQUIRED_KEYS if key not in pairs]
    if missing:
        raise SettingsError(
            f"the parameters text has no {', '.join(missing)} on its last line; "
            "is it from sdrun or the AUTOMATIC1111 web UI?"
        )
    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    in_negative = False
    for raw in lines:
        line = raw.strip()
        if line.startswith(a1111.NEGATIVE_PREFIX) and not in_negative:
            in_negative = True
            line = line[len(a1111.NEGATIVE_PREFIX) :].strip()
        (negative_lines if in_negative else prompt_lines).append(line)
    sampler, schedule_type = a1111_sampler(pairs[a1111.SAMPLER], pairs.get(a1111.SCHEDULE_TYPE))
    size = _SIZE.fullmatch(pairs[a1111.SIZE])
    if size is None:
        raise SettingsError(f"parameters field Size: {quoted(pairs[a1111.SIZE])} is not WIDTHxHEIGHT")
    return ImageSettings(
        prompt="\n".join(prompt_lines),
        negative_prompt="\n".join(negative_lines),
        steps=_integer(pairs, a1111.STEPS),
        sampler=pairs.get(SDRUN_SAMPLER, sampler),
        guidance_scale=_float(pairs, a1111.CFG_SCALE),
        seed=_seed(pairs),
        width=int(size.group(1)),
        height=int(size.group(2)),
        model=pairs.get(a1111.MODEL, ""),
        strength=_optional(pairs, a1111.DENOISING_STRENGTH, _float),
        mask_blur=_optional(pairs, a1111.MASK_BLUR, _integer),
        overlay=_switch(pairs, MASK_OVERLAY) if MASK_OVERLAY in pairs else True,
        clip_skip=_optional(pairs, a1111.CLIP_SKIP, _integer) or 1,
        eta=next((_float(pairs, key) for key in _ETA_KEYS if key in pairs), None),
        schedule_type=None if SDRUN_SAMPLER in pairs else schedule_type,
    )


def _eta_key(label: str) -> str:
    """The web UI's name for a sampler's eta: DDIM's has its own key."""
    return a1111.ETA_DDIM if label == "DDIM" else a1111.ETA


def _optional(pairs: dict[str, str], key: str, read: Callable[[dict[str, str], str], T]) -> T | None:
    return read(pairs, key) if key in pairs else None
