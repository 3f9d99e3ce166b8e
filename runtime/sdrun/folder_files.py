"""The one gate through which sdrun reads a model folder's files: a model folder may come from a stranger.

`inside` resolves a path named by the folder (a graph, its external data, a config, a manifest entry)
and refuses anything that leaves the folder: an absolute path, a `..` part, a symlink whose target is
outside, or a hard link owned by another user than the folder. A hard link is a name for the very file,
so it cannot be told from the outside file it may be: one that the folder's owner made (a copy of a folder
made with `cp -l`, benchmarks/variants.py) is theirs to read, but one to another user's file is what a
stranger who shares the machine would plant (where the kernel lets users link files they cannot read:
fs.protected_hardlinks=0) so that the user running sdrun reads it for them.

The readers bound what they read before parsing it: a size cap, finite numbers, integers of a sane length
and JSON nested no deeper than Python's parser can take.
"""

import json
import math
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from sdrun.errors import ModelFolderError

# Far above any real config (CLIP's vocab.json is 1.6 MB, merges.txt 0.5 MB, a manifest some kB).
MAX_TEXT_FILE_BYTES = 16 * 2**20
# transformers writes int(1e30) as "no length" (31 digits); no config needs more.
_MAX_INTEGER_DIGITS = 40


def inside(root: Path, name: str | Path, what: str = "file") -> Path:
    """The resolved path of `name`, a regular file within the folder `root`; else a ModelFolderError.

    `name` is relative to `root` as the folder wrote it. Symlinks are allowed when they stay inside.
    """
    text = str(name)
    if not text or "\0" in text:
        raise ModelFolderError(f"model folder {root} names an empty or invalid {what} path {text!r}")
    parts = PurePosixPath(text.replace("\\", "/")).parts
    if (
        PurePosixPath(text).is_absolute()
        or PureWindowsPath(text).is_absolute()
        or PureWindowsPath(text).drive
    ):
        raise ModelFolderError(
            f"model folder {root} names the {what} {text!r} by an absolute path; a model folder may "
            "only read its own files: do not use this folder"
        )
    if ".." in parts:
        raise ModelFolderError(
            f"model folder {root} names the {what} {text!r}, which leads out of the folder; a model "
            "folder may only read its own files: do not use this folder"
        )
    base = root.resolve()
    try:
        path = (base / text).resolve(strict=True)
    except FileNotFoundError as error:
        raise ModelFolderError(
            f"model folder {root} is incomplete: its {what} {text} is missing; export the model folder again"
        ) from error
    except (OSError, RuntimeError) as error:  # a symlink loop, a name too long
        raise ModelFolderError(
            f"model folder {root}: cannot resolve its {what} {text!r} ({error})"
        ) from error
    if not path.is_relative_to(base):
        raise ModelFolderError(
            f"model folder {root}: its {what} {text} is a link to a file outside the folder; a model "
            "folder may only read its own files: do not use this folder"
        )
    if not path.is_file():
        raise ModelFolderError(f"model folder {root}: its {what} {text} is not a regular file")
    status = path.stat()
    if status.st_nlink > 1 and status.st_uid != base.stat().st_uid:
        raise ModelFolderError(
            f"model folder {root}: its {what} {text} is a hard link to a file of another user; a model "
            "folder may only read its own files: copy the folder (cp -r) if you trust it"
        )
    return path


def read_text(path: Path, limit: int = MAX_TEXT_FILE_BYTES) -> str:
    """The UTF-8 text of `path`, refused when larger than `limit` bytes."""
    try:
        with path.open("rb") as file:
            data = file.read(limit + 1)
    except OSError as error:
        raise ModelFolderError(f"cannot read {path}: {error.strerror or error}") from error
    if len(data) > limit:
        raise ModelFolderError(f"{path} is larger than {limit // 2**20} MiB, far more than any model needs")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ModelFolderError(f"{path} is not UTF-8 text; export the model folder again") from error


def parse_json(text: str, where: str) -> Any:
    """`text` as JSON with finite numbers and integers of at most 40 digits; a ModelFolderError naming
    `where` otherwise (deep nesting included)."""
    try:
        return json.loads(text, parse_float=_finite_float, parse_int=_short_int, parse_constant=_no_constant)
    except RecursionError as error:
        raise ModelFolderError(f"{where} nests too deeply to be a model config") from error
    except ValueError as error:  # JSONDecodeError included
        raise ModelFolderError(f"{where} is not valid JSON ({str(error)[:200]})") from error


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in the file at `path` (bounded as `read_text` and `parse_json` say)."""
    data = parse_json(read_text(path), str(path))
    if not isinstance(data, dict):
        raise ModelFolderError(f"{path} is not a JSON object; export the model folder again")
    return data


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


def _short_int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_INTEGER_DIGITS:
        raise ValueError(f"an integer of {len(text)} digits")
    return int(text)


def _no_constant(text: str) -> float:
    raise ValueError(f"{text} is not a number a config may hold")
