"""Where a generation's PNGs go: names from a pattern, checked before any sampling, written whole or not
at all."""

import os
import re
import string
from pathlib import Path

from sdrun.errors import SettingsError

OUT_FIELDS = {"i", "seed"}
# A format spec such as {i:04} is fine; {i:>100000000} would make a 100 MB name.
_MAX_FORMAT_WIDTH = 32
_MAX_NAME_BYTES = 255  # Linux's NAME_MAX
_MAX_PATH_BYTES = 4096  # Linux's PATH_MAX


def output_paths(pattern: str, seeds: list[int]) -> list[Path]:
    """Fill {i} and {seed} in the --out pattern; several images without either get -0, -1, ... added."""
    try:
        parsed = list(string.Formatter().parse(pattern))
        fields = {name for _, name, _, _ in parsed if name is not None}
        if not fields <= OUT_FIELDS:
            raise ValueError
        specs = "".join(spec or "" for _, _, spec, _ in parsed)
        if any(int(width) > _MAX_FORMAT_WIDTH for width in re.findall(r"[0-9]+", specs)):
            raise SettingsError(f"--out {pattern[:80]!r}: a field width may be at most {_MAX_FORMAT_WIDTH}")
        if len(seeds) > 1 and not fields:
            path = Path(pattern)
            pattern = str(path.with_name(f"{path.stem}-{{i}}{path.suffix}"))
        paths = [Path(pattern.format(i=index, seed=seed)) for index, seed in enumerate(seeds)]
    except (KeyError, IndexError, ValueError) as error:
        raise SettingsError(f"--out {pattern[:80]!r}: a pattern may use only {{i}} and {{seed}}") from error
    for path in paths:
        if len(os.fsencode(path)) > _MAX_PATH_BYTES or any(
            len(os.fsencode(part)) > _MAX_NAME_BYTES for part in path.parts
        ):
            raise SettingsError(f"--out {str(path)[:80]!r}...: the file name is too long")
    return paths


def check_outputs(paths: list[Path], overwrite: bool) -> None:
    """Refuse, before any work, outputs that cannot be written: a folder in the way, an existing file
    (unless `overwrite`), a parent that is not a writable folder, or one name given twice."""
    if len(set(paths)) != len(paths):
        raise SettingsError("--out gives several images the same file name: use {i} or {seed} in it")
    for path in paths:
        if path.is_dir():
            raise SettingsError(f"--out {path} is a folder: give a file name such as {path / 'image.png'}")
        if path.exists() and not overwrite:
            raise SettingsError(f"{path} exists: add --overwrite to replace it, or choose another --out")
        parent = path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise SettingsError(f"cannot write {path}: {parent} is not a folder")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise SettingsError(f"cannot write {path}: {parent} is not writable")
