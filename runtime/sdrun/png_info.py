"""Generation settings in a PNG's `parameters` text chunk, in the format of the AUTOMATIC1111 web UI.

The text is the prompt, an optional "Negative prompt: ..." line, and one line of comma-separated
"Key: value" pairs; a value holding a comma, colon or newline is written as a JSON string:

    a red cube on a table
    Negative prompt: blurry
    Steps: 20, Sampler: Euler a, Schedule type: Uniform, CFG scale: 7.5, Seed: 1, Size: 512x512, Model: sd15

As in that format, leading and trailing spaces of each prompt line are not kept, and a prompt line that
starts with "Negative prompt:" cannot be told from the negative prompt.
"""

import json
import re
from pathlib import Path

from PIL import Image, PngImagePlugin

from sdrun.errors import SettingsError
from sdrun.settings import ImageSettings

PARAMETERS_KEY = "parameters"
NEGATIVE_PREFIX = "Negative prompt:"
KARRAS = "Karras"
# sdrun sampler -> the web UI's sampler label and schedule type.
SAMPLER_LABELS = {
    "ddpm": ("DDPM", "Uniform"),
    "ddim": ("DDIM", "Uniform"),
    "euler": ("Euler", "Uniform"),
    "euler_a": ("Euler a", "Uniform"),
    "dpmpp_2m": ("DPM++ 2M", "Uniform"),
    "dpmpp_2m_karras": ("DPM++ 2M", KARRAS),
}
_LABEL_SAMPLERS = {
    label.lower(): name for name, (label, schedule) in SAMPLER_LABELS.items() if schedule != KARRAS
}
_KARRAS_SAMPLERS = {"dpmpp_2m": "dpmpp_2m_karras"}
# Since web UI 1.9, "Automatic" means each sampler's default schedule, which for DPM++ 2M is Karras.
_AUTOMATIC_KARRAS = {"dpmpp_2m"}
# One "Key: value" pair: a JSON string (escapes allowed) or anything up to the next comma.
_PAIR = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_REQUIRED_KEYS = ("Steps", "Sampler", "CFG scale", "Seed", "Size")


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
    label, schedule = SAMPLER_LABELS.get(settings.sampler, (settings.sampler, "Uniform"))
    pairs = {
        "Steps": settings.steps,
        "Sampler": label,
        "Schedule type": schedule,
        "CFG scale": _number(settings.guidance_scale),
        "Seed": settings.seed,
        "Size": f"{settings.width}x{settings.height}",
        "Model": settings.model or None,
        "Denoising strength": None if settings.strength is None else _number(settings.strength),
    }
    line = ", ".join(f"{key}: {_quote(value)}" for key, value in pairs.items() if value is not None)
    negative = f"\n{NEGATIVE_PREFIX} {settings.negative_prompt}" if settings.negative_prompt else ""
    return f"{settings.prompt}{negative}\n{line}".strip()


def sampler_from_label(label: str, schedule: str | None) -> str:
    """The sdrun sampler for a web UI sampler label and schedule type (sdrun's own names pass through);
    a combination sdrun lacks comes back as a label for the error message."""
    if label in SAMPLER_LABELS:
        return label
    base_label, karras = label, schedule == KARRAS
    if label.endswith(f" {KARRAS}"):  # before web UI 1.9 the schedule was part of the label
        base_label, karras = label[: -len(KARRAS) - 1], True
    base = _LABEL_SAMPLERS.get(base_label.lower())
    if base is None:
        return label
    if karras or (schedule == "Automatic" and base in _AUTOMATIC_KARRAS):
        return _KARRAS_SAMPLERS.get(base, f"{base_label} {KARRAS}")
    return base


def _parse_pairs(line: str) -> dict[str, str]:
    return {key.strip(): _unquote(value.strip()) for key, value in _PAIR.findall(line)}


def _integer(pairs: dict[str, str], key: str) -> int:
    try:
        return int(pairs[key])
    except ValueError:
        raise SettingsError(f"parameters field {key}: {pairs[key]!r} is not a whole number") from None


def _float(pairs: dict[str, str], key: str) -> float:
    try:
        return float(pairs[key])
    except ValueError:
        raise SettingsError(f"parameters field {key}: {pairs[key]!r} is not a number") from None


def parse_parameters(text: str) -> ImageSettings:
    """Read settings back from a `parameters` text (ours or the web UI's); fields sdrun has no use for,
    such as "Model hash" or "Version", are ignored."""
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
        if line.startswith(NEGATIVE_PREFIX) and not in_negative:
            in_negative = True
            line = line[len(NEGATIVE_PREFIX) :].strip()
        (negative_lines if in_negative else prompt_lines).append(line)
    size = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", pairs["Size"])
    if size is None:
        raise SettingsError(f"parameters field Size: {pairs['Size']!r} is not WIDTHxHEIGHT")
    return ImageSettings(
        prompt="\n".join(prompt_lines),
        negative_prompt="\n".join(negative_lines),
        steps=_integer(pairs, "Steps"),
        sampler=sampler_from_label(pairs["Sampler"], pairs.get("Schedule type")),
        guidance_scale=_float(pairs, "CFG scale"),
        seed=_integer(pairs, "Seed"),
        width=int(size.group(1)),
        height=int(size.group(2)),
        model=pairs.get("Model", ""),
        strength=_float(pairs, "Denoising strength") if "Denoising strength" in pairs else None,
    )


def save_png(image: Image.Image, path: str | Path, settings: ImageSettings) -> None:
    """Write `image` as a PNG carrying its settings (a tEXt chunk, or iTXt when the text is not Latin-1)."""
    info = PngImagePlugin.PngInfo()
    info.add_text(PARAMETERS_KEY, format_parameters(settings))
    image.save(path, format="PNG", pnginfo=info)


def read_png_settings(path: str | Path) -> ImageSettings:
    """The settings recorded in a PNG's `parameters` chunk."""
    try:
        with Image.open(path) as image:
            image.load()
            text = image.info.get(PARAMETERS_KEY)
    except (OSError, SyntaxError) as error:
        raise SettingsError(f"cannot read {path} as an image ({error})") from None
    if not isinstance(text, str):
        raise SettingsError(
            f"{path} has no '{PARAMETERS_KEY}' text chunk: it was not made by sdrun or the web UI"
        )
    return parse_parameters(text)
