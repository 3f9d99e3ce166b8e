"""Generation settings as text, in the format of the AUTOMATIC1111 web UI's infotext (the `parameters` chunk
of its PNGs, the "generation data" civitai shows, its API's `infotexts`).

The text is the prompt, an optional "Negative prompt: ..." line, and one line of comma-separated
"Key: value" pairs; a value holding a comma, colon or newline is written as a JSON string:

    a red cube on a table
    Negative prompt: blurry
    Steps: 20, Sampler: Euler a, Schedule type: Uniform, CFG scale: 7.5, Seed: 1, Size: 512x512, Model: sd15

As in that format, leading and trailing spaces of each prompt line are not kept, and a prompt line that
starts with "Negative prompt:" cannot be told from the negative prompt.

The fields are written in the order of the web UI's `processing.create_infotext`, with its spelling; the
model's "Model hash" when the folder records its checkpoint's digest, and "Version: sdrun X.Y.Z".

A text to read settings from may come from anywhere: it is bounded, and the parser is linear in its input.
Reading never drops a field silently: what sdrun has no setting for (an extension's fields, "Lora hashes",
a VAE's name) comes back in `Infotext.unhonoured`, for the caller to name in one warning.
The keys are A1111's (sdrun.a1111); "Mask overlay", "sdrun sampler" and "sdrun hires sampler" are sdrun's
own (the latter two name a diffusers-discretised sampler whose A1111 label runs A1111's own). "RNG" is the
random source: the web UI writes it only for its CPU and NV sources, so a text without it was drawn by its
GPU source ("gpu"), and sdrun writes "RNG: numpy" for its own default so that its pictures come back as
they were made.
"""

import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TypeVar

from sdrun import a1111
from sdrun.errors import SettingsError, quoted
from sdrun.random_sources import GPU, NUMPY
from sdrun.samplers import a1111_names, a1111_sampler
from sdrun.settings import MAX_SEED, HiresFix, ImageSettings

T = TypeVar("T")
_REQUIRED_KEYS = (a1111.STEPS, a1111.SAMPLER, a1111.CFG_SCALE, a1111.SEED, a1111.SIZE)
_ETA_KEYS = (a1111.ETA_DDIM, a1111.ETA)
# sdrun's own keys: inpainting without the init image pasted back; the sdrun sampler, where A1111's names
# for it stand for another (sdrun's diffusers-discretised euler_a is "Euler a", which reads as k_euler_a).
MASK_OVERLAY = "Mask overlay"
SDRUN_SAMPLER = "sdrun sampler"
SDRUN_HIRES_SAMPLER = "sdrun hires sampler"
# The web UI's longest texts (prompts with many LoRA and embedding tags) are a few kB.
MAX_PARAMETERS_CHARACTERS = 65_536
_WHOLE = re.compile(r"[0-9]{1,20}")
_DECIMAL = re.compile(r"-?[0-9]{1,20}(\.[0-9]{1,20})?([eE][-+]?[0-9]{1,3})?")
_SIZE = re.compile(r"\s*([0-9]{1,6})\s*x\s*([0-9]{1,6})\s*")
# New hashes are 10 hex digits, those of web UIs before 1.1 are 8 (a1111.MODEL_HASH).
_MODEL_HASH = re.compile(r"[0-9a-fA-F]{8,64}")
# civitai writes "Civitai resources: [{...}, ...]" and "Hashes: {...}" unquoted; its reader takes each up to
# its first closing bracket.
_JSON_CLOSING = {"[": "]", "{": "}"}
# The distribution that installs sdrun (with sdexport; pyproject.toml).
_DISTRIBUTION = "sdexport"
# At most this many unhonoured keys are named in the warning (a stranger's text may hold thousands).
MAX_NAMED_KEYS = 12


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


def sdrun_version() -> str:
    """The "Version" sdrun writes: its own name and version, which the web UI's reader cannot parse as one
    of its versions and so reads as a current text (no compatibility options)."""
    try:
        return f"sdrun {metadata.version(_DISTRIBUTION)}"
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "sdrun"


def format_parameters(settings: ImageSettings) -> str:
    """The `parameters` text for one image, its fields in the order the web UI writes them (its fixed
    fields, then those its scripts add, as Mask blur and Eta, then Version)."""
    label, schedule = a1111_names(settings.sampler, settings.schedule_type)
    varied = settings.subseed_strength != 0
    resized = settings.seed_resize_from
    own = a1111_sampler(label, schedule)[0] != settings.sampler
    pairs = {
        a1111.STEPS: settings.steps,
        a1111.SAMPLER: label,
        a1111.SCHEDULE_TYPE: schedule,
        a1111.CFG_SCALE: _number(settings.guidance_scale),
        a1111.SEED: settings.seed,
        a1111.SIZE: f"{settings.width}x{settings.height}",
        a1111.MODEL_HASH: settings.model_hash or None,
        a1111.MODEL: settings.model or None,
        a1111.VARIATION_SEED: settings.subseed if varied else None,
        a1111.VARIATION_SEED_STRENGTH: _number(settings.subseed_strength) if varied else None,
        a1111.SEED_RESIZE_FROM: f"{resized[0]}x{resized[1]}" if resized else None,
        a1111.DENOISING_STRENGTH: _strength(settings),
        a1111.CLIP_SKIP: settings.clip_skip if settings.clip_skip > 1 else None,
        a1111.ENSD: settings.eta_noise_seed_delta or None,
        a1111.RNG: _rng_value(settings.random_source),
        a1111.MASK_BLUR: settings.mask_blur,
        MASK_OVERLAY: "off" if settings.mask_blur is not None and not settings.overlay else None,
        _eta_key(label): None if settings.eta is None else _number(settings.eta),
        **_hires_pairs(settings.hires, settings.sampler, settings.schedule_type),
        a1111.EMPHASIS: _emphasis(settings),
        a1111.PAD_CONDS: True if settings.pad_conds else None,
        SDRUN_SAMPLER: settings.sampler if own else None,
        a1111.VERSION: sdrun_version(),
    }
    line = ", ".join(f"{key}: {_quote(value)}" for key, value in pairs.items() if value is not None)
    negative = f"\n{a1111.NEGATIVE_PREFIX} {settings.negative_prompt}" if settings.negative_prompt else ""
    return f"{settings.prompt}{negative}\n{line}".strip()


def _strength(settings: ImageSettings) -> str | None:
    """The web UI's "Denoising strength": image-to-image's, or on text-to-image the hires fix's."""
    strength = settings.hires.strength if settings.hires is not None else settings.strength
    return None if strength is None else _number(strength)


def _hires_pairs(hires: HiresFix | None, sampler: str, schedule_type: str | None) -> dict[str, object]:
    """The hires fix's keys in the order the web UI writes them; the sampler, schedule type and prompts only
    where they differ from the first pass's (`prepare` leaves the prompts None where they are equal)."""
    if hires is None:
        return {}
    label, schedule = a1111_names(sampler, schedule_type)
    hires_sampler = hires.sampler or sampler
    hires_label, hires_schedule = a1111_names(hires_sampler, hires.schedule_type or schedule_type)
    # As SDRUN_SAMPLER: a hires sampler of its own whose label reads back as another (a diffusers row).
    own = hires_sampler != sampler and a1111_sampler(hires_label, hires_schedule)[0] != hires_sampler
    return {
        a1111.HIRES_SAMPLER: hires_label if hires_label != label else None,
        a1111.HIRES_PROMPT: hires.prompt,
        a1111.HIRES_NEGATIVE_PROMPT: hires.negative_prompt,
        a1111.HIRES_UPSCALE: _number(hires.scale) if hires.resize is None else None,
        a1111.HIRES_RESIZE: None if hires.resize is None else f"{hires.resize[0]}x{hires.resize[1]}",
        a1111.HIRES_STEPS: hires.steps,
        a1111.HIRES_UPSCALER: hires.upscaler,
        a1111.HIRES_SCHEDULE_TYPE: hires_schedule if hires_schedule != schedule else None,
        SDRUN_HIRES_SAMPLER: hires_sampler if own else None,
    }


def _parse_hires(pairs: dict[str, str], sampler: str, schedule_type: str | None) -> HiresFix | None:
    """The hires fix, when the text has one: as the web UI's paste, a denoising strength with a hires upscale,
    resize or upscaler (their defaults otherwise: 2, "Latent")."""
    keys = (a1111.HIRES_UPSCALE, a1111.HIRES_RESIZE, a1111.HIRES_UPSCALER)
    if a1111.DENOISING_STRENGTH not in pairs or not any(key in pairs for key in keys):
        return None
    label = pairs.get(a1111.HIRES_SAMPLER, pairs[a1111.SAMPLER])
    schedule = pairs.get(a1111.HIRES_SCHEDULE_TYPE, pairs.get(a1111.SCHEDULE_TYPE))
    hires_sampler, hires_schedule = sampler, schedule_type
    if a1111.HIRES_SAMPLER in pairs or a1111.HIRES_SCHEDULE_TYPE in pairs:
        hires_sampler, hires_schedule = a1111_sampler(label, schedule)
    if SDRUN_HIRES_SAMPLER in pairs:
        hires_sampler, hires_schedule = pairs[SDRUN_HIRES_SAMPLER], None
    return HiresFix(
        scale=_optional(pairs, a1111.HIRES_UPSCALE, _float) or 2.0,
        resize=_optional(pairs, a1111.HIRES_RESIZE, _size),
        upscaler=pairs.get(a1111.HIRES_UPSCALER, "Latent"),
        steps=_optional(pairs, a1111.HIRES_STEPS, _integer),
        strength=_float(pairs, a1111.DENOISING_STRENGTH),
        prompt=pairs.get(a1111.HIRES_PROMPT),
        negative_prompt=pairs.get(a1111.HIRES_NEGATIVE_PROMPT),
        sampler=hires_sampler,
        schedule_type=hires_schedule,
    )


def _parse_pairs(line: str) -> dict[str, str]:
    """The "Key: value" pairs of the settings line, scanned once from left to right: a value is a JSON
    string (escapes allowed), a JSON object or list up to its first closing bracket (civitai's fields, as
    its reader takes them), or anything up to the next comma. A word alone between commas is a field whose
    value is its key (the web UI writes such a field as its key alone)."""
    pairs: dict[str, str] = {}
    position, end = 0, len(line)
    while position < end:
        colon = line.find(":", position)
        if colon < 0:
            break
        comma = line.rfind(",", position, colon)
        if comma >= 0:
            for word in line[position:comma].split(","):
                if word.strip():
                    pairs[word.strip()] = word.strip()
            position = comma + 1
        key = line[position:colon].strip()
        position = colon + 1
        while position < end and line[position] == " ":
            position += 1
        if position < end and line[position] == '"':
            closing = _closing_quote(line, position)
            value = _unquote(line[position : closing + 1])
            comma = line.find(",", closing + 1)
        elif position < end and line[position] in _JSON_CLOSING:
            # Unclosed, it runs to the line's end (as an unclosed quote does): one scan of the line in all.
            closing = line.find(_JSON_CLOSING[line[position]], position)
            closing = end - 1 if closing < 0 else closing
            value = line[position : closing + 1]
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


def _seed_number(pairs: dict[str, str], key: str) -> int:
    seed = _integer(pairs, key)
    if seed > MAX_SEED:
        raise SettingsError(
            f"parameters field {key}: {seed} is above {MAX_SEED}, the largest seed sdrun takes"
        )
    return seed


def _size(pairs: dict[str, str], key: str) -> tuple[int, int]:
    size = _SIZE.fullmatch(pairs[key])
    if size is None:
        raise SettingsError(f"parameters field {key}: {quoted(pairs[key])} is not WIDTHxHEIGHT")
    return int(size.group(1)), int(size.group(2))


def _float(pairs: dict[str, str], key: str) -> float:
    if not _DECIMAL.fullmatch(pairs[key]):
        raise SettingsError(f"parameters field {key}: {quoted(pairs[key])} is not a number")
    return float(pairs[key])


def _switch(pairs: dict[str, str], key: str) -> bool:
    if pairs[key] not in ("on", "off"):
        raise SettingsError(f"parameters field {key}: {quoted(pairs[key])} is not on or off")
    return pairs[key] == "on"


@dataclass(frozen=True)
class Infotext:
    """A `parameters` text as sdrun reads it: the settings it honours, and every other field of its
    settings line (key -> value as written, in the text's order), which the picture is made without."""

    settings: ImageSettings
    unhonoured: dict[str, str]

    def warning(self, source: str) -> str | None:
        """One line naming the fields that `source` (where the text came from) carries and sdrun does not
        honour; None when it honours them all."""
        if not self.unhonoured:
            return None
        keys = list(self.unhonoured)
        named = ", ".join(quoted(key) if not key.isprintable() else key[:60] for key in keys[:MAX_NAMED_KEYS])
        more = f" and {len(keys) - MAX_NAMED_KEYS:,} more" if len(keys) > MAX_NAMED_KEYS else ""
        return (
            f"{source} has {len(keys):,} field{'s' if len(keys) > 1 else ''} that sdrun does not honour, "
            f"so its picture may differ: {named}{more}"
        )


class _Fields(dict[str, str]):
    """The settings line's fields, remembering which ones the reader looked up: every other one is
    reported as unhonoured, so that a key that gains a reader is honoured without another list to edit."""

    def __init__(self, pairs: dict[str, str]) -> None:
        super().__init__(pairs)
        self.looked_up: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.looked_up.add(key)
        return super().__getitem__(key)

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        self.looked_up.add(key)
        return super().get(key, default)

    def unread(self) -> dict[str, str]:
        return {key: value for key, value in self.items() if key not in self.looked_up}


def read_parameters_file(path: Path) -> Infotext:
    """A text file holding a `parameters` text (pasted from civitai or the web UI's PNG Info), read
    bounded; "-" is standard input."""
    limit = 4 * MAX_PARAMETERS_CHARACTERS  # UTF-8 takes at most 4 bytes a character
    try:
        if str(path) == "-":
            data = sys.stdin.buffer.read(limit + 1)
        else:
            with path.open("rb") as file:
                data = file.read(limit + 1)
    except OSError as error:
        raise SettingsError(f"cannot read {path}: {error.strerror or error}") from error
    if len(data) > limit:
        raise SettingsError(f"{path} is larger than a parameters text sdrun reads ({limit:,} bytes)")
    try:
        return read_parameters(data.decode("utf-8-sig"))
    except UnicodeDecodeError as error:
        raise SettingsError(f"{path} is not UTF-8 text: save the parameters text as UTF-8") from error


def parse_parameters(text: str) -> ImageSettings:
    """The settings of a `parameters` text (ours or the web UI's), without the fields sdrun does not
    honour: `read_parameters` tells which those are."""
    return read_parameters(text).settings


def read_parameters(text: str) -> Infotext:
    """Read a `parameters` text (ours or the web UI's, or civitai's "generation data"): the settings sdrun
    honours, and the fields it does not."""
    if len(text) > MAX_PARAMETERS_CHARACTERS:
        raise SettingsError(
            f"the parameters text has {len(text):,} characters, more than the {MAX_PARAMETERS_CHARACTERS:,} "
            "that sdrun reads"
        )
    *lines, last = text.strip().split("\n")
    pairs = _Fields(_parse_pairs(last))
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
    width, height = _size(pairs, a1111.SIZE)
    variation = _optional(pairs, a1111.VARIATION_SEED_STRENGTH, _float) or 0.0
    subseed = _optional(pairs, a1111.VARIATION_SEED, _seed_number)
    sampler, schedule_type = a1111_sampler(pairs[a1111.SAMPLER], pairs.get(a1111.SCHEDULE_TYPE))
    if SDRUN_SAMPLER in pairs:
        sampler, schedule_type = pairs[SDRUN_SAMPLER], None
    hires = _parse_hires(pairs, sampler, schedule_type)
    settings = ImageSettings(
        prompt="\n".join(prompt_lines),
        negative_prompt="\n".join(negative_lines),
        steps=_integer(pairs, a1111.STEPS),
        sampler=sampler,
        guidance_scale=_float(pairs, a1111.CFG_SCALE),
        seed=_seed_number(pairs, a1111.SEED),
        width=width,
        height=height,
        model=pairs.get(a1111.MODEL, ""),
        strength=_optional(pairs, a1111.DENOISING_STRENGTH, _float) if hires is None else None,
        mask_blur=_optional(pairs, a1111.MASK_BLUR, _integer),
        overlay=_switch(pairs, MASK_OVERLAY) if MASK_OVERLAY in pairs else True,
        clip_skip=_optional(pairs, a1111.CLIP_SKIP, _integer) or 1,
        eta=next((_float(pairs, key) for key in _ETA_KEYS if key in pairs), None),
        model_hash=_optional(pairs, a1111.MODEL_HASH, _model_hash) or "",
        random_source=_random_source(pairs),
        eta_noise_seed_delta=_optional(pairs, a1111.ENSD, _seed_number) or 0,
        subseed=subseed if variation else None,
        subseed_strength=variation,
        seed_resize_from=_optional(pairs, a1111.SEED_RESIZE_FROM, _size),
        emphasis=pairs.get(a1111.EMPHASIS, a1111.EMPHASIS_DEFAULT),
        pad_conds=pairs.get(a1111.PAD_CONDS) == "True",
        hires=hires,
        schedule_type=schedule_type,
    )
    # The writer's version says nothing of the picture, unless it is a web UI's that drew otherwise.
    if not a1111.drawn_before_current(dict.get(pairs, a1111.VERSION)):
        pairs.looked_up.add(a1111.VERSION)
    return Infotext(settings, pairs.unread())


def _model_hash(pairs: dict[str, str], key: str) -> str:
    if not _MODEL_HASH.fullmatch(pairs[key]):
        raise SettingsError(f"parameters field {key}: {quoted(pairs[key])} is not a checkpoint's hex hash")
    return pairs[key].lower()


def _rng_value(source: str | None) -> str | None:
    """The RNG field: the web UI's spelling of its sources, none for its default GPU, and sdrun's "numpy"."""
    if source is None or source == NUMPY:
        return NUMPY
    return None if source == GPU else {name: key for key, name in a1111.RNG_NAMES.items()}[source]


def _random_source(pairs: dict[str, str]) -> str | None:
    """The source a text names: GPU, the web UI's default, when it names none; None for sdrun's numpy."""
    value = pairs.get(a1111.RNG, a1111.RNG_DEFAULT)
    if value.lower() == NUMPY:
        return None
    source = a1111.RNG_NAMES.get(value.upper())
    if source is None:
        raise SettingsError(
            f"parameters field {a1111.RNG}: {quoted(value)} is not a random source sdrun draws "
            f"({', '.join(a1111.RNG_NAMES)} or {NUMPY})"
        )
    return source


def _emphasis(settings: ImageSettings) -> str | None:
    """The emphasis mode, written as the web UI writes it: when not its default and a prompt has brackets;
    sdrun also writes "None" for a prompt with BREAK, which that mode reads as a word."""
    texts = settings.prompt + settings.negative_prompt
    differs = "(" in texts or "[" in texts or (settings.emphasis == "None" and "BREAK" in texts)
    return settings.emphasis if settings.emphasis != a1111.EMPHASIS_DEFAULT and differs else None


def _eta_key(label: str) -> str:
    """The web UI's name for a sampler's eta: DDIM's has its own key."""
    return a1111.ETA_DDIM if label == "DDIM" else a1111.ETA


def _optional(pairs: dict[str, str], key: str, read: Callable[[dict[str, str], str], T]) -> T | None:
    return read(pairs, key) if key in pairs else None
