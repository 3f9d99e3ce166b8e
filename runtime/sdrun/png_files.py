"""PNG files that carry their settings: written whole or not at all under a name taken only if free, and
read back for their `parameters` text without decoding the picture.

A PNG to read settings from may come from anywhere: its chunks are walked by their lengths, at most
MAX_PNG_CHUNKS of them, each of a PNG type, and the text is bounded before and after decompression.
"""

import io
import os
import re
import struct
import tempfile
import zlib
from pathlib import Path

from PIL import Image, PngImagePlugin

from sdrun.a1111 import PARAMETERS_CHUNK
from sdrun.errors import SettingsError
from sdrun.infotext import MAX_PARAMETERS_CHARACTERS, Infotext, format_parameters, read_parameters
from sdrun.outputs import place_file
from sdrun.settings import ImageSettings

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")
# A chunk's type is four ASCII letters (PNG spec, 5.4). PIL writes 64 KiB image chunks, so a 4-megapixel
# picture has a few hundred; a file of more chunks than this is walked for no picture.
_CHUNK_TYPE = re.compile(rb"[A-Za-z]{4}")
MAX_PNG_CHUNKS = 100_000


def png_bytes(image: Image.Image, settings: ImageSettings) -> bytes:
    """`image` as PNG bytes whose `parameters` chunk reproduces it (a tEXt chunk, or iTXt when the text is
    not Latin-1), as the web UI writes them."""
    info = PngImagePlugin.PngInfo()
    info.add_text(PARAMETERS_CHUNK, format_parameters(settings))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def save_png(
    image: Image.Image, path: str | Path, settings: ImageSettings, *, overwrite: bool = False
) -> None:
    """Write `image` as a PNG carrying its settings (`png_bytes`).

    The file is written under a temporary name beside `path` and then given its name, so a full disk or
    an interruption leaves no half-written picture; a failure is a one-line SettingsError. The name is
    taken only if free at that moment (sdrun.outputs.place_file): a file, link or dangling link that
    appeared at `path` while the picture was made is kept and refused, unless `overwrite`."""
    path = Path(path)
    try:
        data = png_bytes(image, settings)  # PIL's encoder reports its failures as OSError too
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, partial = tempfile.mkstemp(prefix=f".{path.name[:100]}.", suffix=".partial", dir=path.parent)
    except OSError as error:
        raise SettingsError(f"cannot write {path}: {error.strerror or error}") from error
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
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
    return read_png_infotext(path).settings


def read_png_infotext(path: str | Path) -> Infotext:
    """A PNG's `parameters` chunk as sdrun reads it: the settings, and the fields it does not honour."""
    text = _parameters_chunk(Path(path))
    if text is None:
        raise SettingsError(
            f"{path} has no '{PARAMETERS_CHUNK}' text chunk: it was not made by sdrun or the web UI"
        )
    return read_parameters(text)


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
                if keyword == PARAMETERS_CHUNK.encode():
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
