"""Generation settings in a PNG's `parameters` text chunk, in the format of the AUTOMATIC1111 web UI.

The text is the prompt, an optional "Negative prompt: ..." line, and one line of comma-separated
"Key: value" pairs; a value holding a comma, colon or newline is written as a JSON string:

    a red cube on a table
    Negative prompt: blurry
    Steps: 20, Sampler: Euler a, Schedule type: Uniform, CFG scale: 7.5, Seed: 1, Size: 512x512, Model: sd15

As in that format, leading and trailing spaces of each prompt line are not kept, and a prompt line that
starts with "Negative prompt:" cannot be told from the negative prompt.

A PNG to read settings from may come from anywhere: its chunks are walked without decoding the picture,
the text is bounded before and after decompression, and the parser is linear in its input.
"""

import json
import os
import re
import struct
import tempfile
import zlib
from pathlib import Path

from PIL import Image, PngImagePlugin

from sdrun.errors import SettingsError, quoted
from sdrun.outputs import place_file
from sdrun.samplers import a1111_names, sampler_for_a1111
from sdrun.settings import MAX_SEED, ImageSettings

PARAMETERS_KEY = "parameters"
NEGATIVE_PREFIX = "Negative prompt:"
_REQUIRED_KEYS = ("Steps", "Sampler", "CFG scale", "Seed", "Size")
_ETA_KEYS = ("Eta DDIM", "Eta")
# The web UI's longest texts (prompts with many LoRA and embedding tags) are a few kB.
MAX_PARAMETERS_CHARACTERS = 65_536
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")
# A chunk's type is four ASCII letters (PNG spec, 5.4). PIL writes 64 KiB image chunks, so a 4-megapixel
# picture has a few hundred; a file of more chunks than this is walked for no picture.
_CHUNK_TYPE = re.compile(rb"[A-Za-z]{4}")
MAX_PNG_CHUNKS = 100_000
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
    label, schedule = a1111_names(settings.sampler)
    pairs = {
        "Steps": settings.steps,
        "Sampler": label,
        "Schedule type": schedule,
        "CFG scale": _number(settings.guidance_scale),
        "Seed": settings.seed,
        "Size": f"{settings.width}x{settings.height}",
        "Model": settings.model or None,
        "Denoising strength": None if settings.strength is None else _number(settings.strength),
        "Mask blur": settings.mask_blur,
        "Mask overlay": "off" if settings.mask_blur is not None and not settings.overlay else None,
        "Clip skip": settings.clip_skip if settings.clip_skip > 1 else None,
        _eta_key(label): None if settings.eta is None else _number(settings.eta),
    }
    line = ", ".join(f"{key}: {_quote(value)}" for key, value in pairs.items() if value is not None)
    negative = f"\n{NEGATIVE_PREFIX} {settings.negative_prompt}" if settings.negative_prompt else ""
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
    seed = _integer(pairs, "Seed")
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
        if line.startswith(NEGATIVE_PREFIX) and not in_negative:
            in_negative = True
            line = line[len(NEGATIVE_PREFIX) :].strip()
        (negative_lines if in_negative else prompt_lines).append(line)
    size = _SIZE.fullmatch(pairs["Size"])
    if size is None:
        raise SettingsError(f"parameters field Size: {quoted(pairs['Size'])} is not WIDTHxHEIGHT")
    return ImageSettings(
        prompt="\n".join(prompt_lines),
        negative_prompt="\n".join(negative_lines),
        steps=_integer(pairs, "Steps"),
        sampler=sampler_for_a1111(pairs["Sampler"], pairs.get("Schedule type")),
        guidance_scale=_float(pairs, "CFG scale"),
        seed=_seed(pairs),
        width=int(size.group(1)),
        height=int(size.group(2)),
        model=pairs.get("Model", ""),
        strength=_float(pairs, "Denoising strength") if "Denoising strength" in pairs else None,
        mask_blur=_integer(pairs, "Mask blur") if "Mask blur" in pairs else None,
        overlay=_switch(pairs, "Mask overlay") if "Mask overlay" in pairs else True,
        clip_skip=_integer(pairs, "Clip skip") if "Clip skip" in pairs else 1,
        eta=next((_float(pairs, key) for key in _ETA_KEYS if key in pairs), None),
    )


def _eta_key(label: str) -> str:
    """The web UI's name for a sampler's eta: DDIM's has its own key."""
    return _ETA_KEYS[0] if label == "DDIM" else _ETA_KEYS[1]


def save_png(
    image: Image.Image, path: str | Path, settings: ImageSettings, *, overwrite: bool = False
) -> None:
    """Write `image` as a PNG carrying its settings (a tEXt chunk, or iTXt when the text is not Latin-1).

    The file is written under a temporary name beside `path` and then given its name, so a full disk or
    an interruption leaves no half-written picture; a failure is a one-line SettingsError. The name is
    taken only if free at that moment (sdrun.outputs.place_file): a file, link or dangling link that
    appeared at `path` while the picture was made is kept and refused, unless `overwrite`."""
    path = Path(path)
    info = PngImagePlugin.PngInfo()
    info.add_text(PARAMETERS_KEY, format_parameters(settings))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, partial = tempfile.mkstemp(prefix=f".{path.name[:100]}.", suffix=".partial", dir=path.parent)
    except OSError as error:
        raise SettingsError(f"cannot write {path}: {error.strerror or error}") from error
    try:
        with os.fdopen(handle, "wb") as file:
            image.save(file, format="PNG", pnginfo=info)
        os.chmod(partial, 0o666 & ~_umask())
        place_file(Path(partial), path, overwrite)
    except OSError as error:
        raise SettingsError(f"cannot write {path}: {error.strerror or error}; nothing was written") from error
    finally:
        Path(partial).unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_png_settings(path: str | Path) -> ImageSettings:
    """The settings recorded in a PNG's `parameters` chunk (read without decoding the picture)."""
    text = _parameters_chunk(Path(path))
    if text is None:
        raise SettingsError(
            f"{path} has no '{PARAMETERS_KEY}' text chunk: it was not made by sdrun or the web UI"
        )
    return parse_parameters(text)


def _parameters_chunk(path: Path) -> str | None:
    """The text of the first tEXt, zTXt or iTXt chunk named `parameters`, walking the chunks by their
    lengths (PNG spec, sections 5.3 and 11.3.4)."""
    try:
        with path.open("rb") as file:
            if file.read(8) != _PNG_SIGNATURE:
                raise SettingsError(f"{path} is not a PNG file")
            for _ in range(MAX_PNG_CHUNKS):
                if len(header := file.read(8)) < 8:
                    return None
                length, kind = struct.unpack(">I4s", header)
                if not _CHUNK_TYPE.fullmatch(kind):
                    raise SettingsError(f"{path} is a damaged PNG file (a chunk of no PNG type)")
                if kind == b"IEND":
                    return None
                if kind not in _TEXT_CHUNKS:
                    file.seek(length + 4, os.SEEK_CUR)
                    continue
                data = file.read(min(length, 4 * MAX_PARAMETERS_CHARACTERS + 100))
                file.seek(length - len(data) + 4, os.SEEK_CUR)
                keyword, _, body = data.partition(b"\0")
                if keyword == PARAMETERS_KEY.encode():
                    if length > len(data):
                        raise SettingsError(f"{path}: its parameters chunk is larger than sdrun reads")
                    return _chunk_text(kind, body)
            raise SettingsError(f"{path} has more than {MAX_PNG_CHUNKS:,} chunks: it is not a picture's PNG")
    except OSError as error:
        raise SettingsError(f"cannot read {path}: {error.strerror or error}") from error


def _chunk_text(kind: bytes, body: bytes) -> str:
    if kind == b"tEXt":
        return body.decode("latin-1")
    if kind == b"zTXt":
        return _inflate(body[1:]).decode("latin-1")
    compressed, body = body[:1] == b"\x01", body[2:]  # flag, method
    _language, _, body = body.partition(b"\0")
    _translated, _, body = body.partition(b"\0")
    try:
        return (_inflate(body) if compressed else body).decode("utf-8")
    except UnicodeDecodeError as error:
        raise SettingsError("the parameters chunk is not UTF-8 text") from error


def _inflate(data: bytes) -> bytes:
    """zlib data, refused when it inflates past what a parameters text may hold (a bomb)."""
    limit = 4 * MAX_PARAMETERS_CHARACTERS
    inflater = zlib.decompressobj()
    try:
        text = inflater.decompress(data, limit)
    except zlib.error as error:
        raise SettingsError(f"the parameters chunk is damaged ({error})") from error
    if inflater.unconsumed_tail:
        raise SettingsError("the parameters chunk inflates past what sdrun reads: it is not a settings text")
    return text
