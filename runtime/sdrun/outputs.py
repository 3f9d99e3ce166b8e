"""Where a generation's PNGs go: names from a pattern, checked before any sampling, written whole or not
at all."""

import errno
import os
import re
import shutil
import string
from pathlib import Path

from sdrun.errors import SettingsError, quoted

OUT_FIELDS = {"i", "seed"}
# A format spec such as {i:04} or {seed:>10} is fine; {i:>100000000} would make a 100 MB name, and a nested
# field ({i:{seed}}) would take its width from a seed. So a spec is a plain integer one (fill, align, sign,
# zero, width, grouping, base), parsed whole, its width at most two digits and _MAX_FORMAT_WIDTH.
_MAX_FORMAT_WIDTH = 32
_INTEGER_SPEC = re.compile(r"(?:[^{}]?[<>=^])?[-+ ]?#?0?(?P<width>[0-9]{0,2})[,_]?[bdoxXn]?")
_MAX_NAME_BYTES = 255  # Linux's NAME_MAX
_MAX_PATH_BYTES = 4096  # Linux's PATH_MAX


def output_paths(pattern: str, seeds: list[int]) -> list[Path]:
    """Fill {i} and {seed} in the --out pattern; several images without either get -0, -1, ... added."""
    fields = _pattern_fields(pattern)
    if len(seeds) > 1 and not fields:
        path = Path(pattern)
        pattern = str(path.with_name(f"{path.stem}-{{i}}{path.suffix}"))
    try:
        paths = [Path(pattern.format(i=index, seed=seed)) for index, seed in enumerate(seeds)]
    except ValueError as error:  # a spec that parses but does not go together, such as {i:,b}
        raise SettingsError(f"--out {quoted(pattern)}: {error}") from None
    for path in paths:
        if len(os.fsencode(path)) > _MAX_PATH_BYTES or any(
            len(os.fsencode(part)) > _MAX_NAME_BYTES for part in path.parts
        ):
            raise SettingsError(f"--out {quoted(str(path))}: the file name is too long")
    return paths


def _pattern_fields(pattern: str) -> set[str]:
    """The fields of an --out pattern, each checked to be {i} or {seed} with a bounded integer spec."""
    try:
        parsed = list(string.Formatter().parse(pattern))
    except ValueError as error:  # an unmatched brace
        raise SettingsError(
            f"--out {quoted(pattern)}: {error}; a pattern may use only {{i}} and {{seed}} (a literal brace "
            "is written {{ or }})"
        ) from None
    fields = set()
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in OUT_FIELDS or conversion is not None:
            raise SettingsError(f"--out {quoted(pattern)}: a pattern may use only {{i}} and {{seed}}")
        allowed = _INTEGER_SPEC.fullmatch(spec or "")
        if allowed is None or int(allowed["width"] or 0) > _MAX_FORMAT_WIDTH:
            raise SettingsError(
                f"--out {quoted(pattern)}: a field's format must be a plain integer one such as {{i:04}}; "
                f"a field width may be at most {_MAX_FORMAT_WIDTH}"
            )
        fields.add(name)
    return fields


def check_outputs(paths: list[Path], overwrite: bool) -> None:
    """Refuse, before any work, outputs that cannot be written: a folder in the way, an existing file
    (unless `overwrite`), a parent that is not a writable folder, or one name given twice."""
    if len(set(paths)) != len(paths):
        raise SettingsError("--out gives several images the same file name: use {i} or {seed} in it")
    for path in paths:
        if path.is_dir():
            raise SettingsError(f"--out {path} is a folder: give a file name such as {path / 'image.png'}")
        if (path.exists() or path.is_symlink()) and not overwrite:
            raise SettingsError(f"{path} exists: add --overwrite to replace it, or choose another --out")
        parent = path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise SettingsError(f"cannot write {path}: {parent} is not a folder")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise SettingsError(f"cannot write {path}: {parent} is not writable")


# What link(2) answers on a filesystem without hard links (vfat, some FUSE and network mounts).
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS}


def place_file(written: Path, path: Path, overwrite: bool) -> None:
    """Give the finished file `written` (in `path`'s folder) the name `path`, which must be free at this
    moment unless `overwrite`: checking before the work is not enough, since another run or program may
    take the name meanwhile. A hard link is created only where no name (not even a dangling symlink)
    exists, atomically; without hard links, the name is created exclusively (O_EXCL) and the bytes copied.
    `written` is left for the caller to remove."""
    if overwrite:
        os.replace(written, path)
        return
    try:
        os.link(written, path, follow_symlinks=False)
    except FileExistsError:
        raise _taken(path) from None
    except OSError as error:
        if error.errno not in _NO_HARD_LINKS:
            raise
        _copy_exclusively(written, path)


def _copy_exclusively(written: Path, path: Path) -> None:
    try:
        # O_EXCL with O_CREAT also refuses a symlink at `path`, dangling or not.
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, os.stat(written).st_mode & 0o777)
    except FileExistsError:
        raise _taken(path) from None
    try:
        with open(written, "rb") as source, os.fdopen(target, "wb") as copy:
            shutil.copyfileobj(source, copy)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _taken(path: Path) -> SettingsError:
    return SettingsError(
        f"{path} exists (made while sdrun worked?), so this picture was not written; that file was kept, as "
        "were pictures written before: add --overwrite to replace it, or choose another --out"
    )
