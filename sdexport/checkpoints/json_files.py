"""JSON that comes with a checkpoint is a stranger's: a diffusers folder's configs and shard indexes, a
TAESD folder's config, the tokenizer a diffusers folder carries, a LoRA's adapter metadata.

It is read as sdrun reads a model folder's configs (`sdrun.folder_files.parse_json`: finite numbers,
integers of at most 40 digits, no nesting deeper than Python's parser takes) within a size bound. sdrun's
own file reader is not used because its errors are sdrun's and tell the user to export the folder again;
here a refusal is a one-line CheckpointError naming the file.
"""

from pathlib import Path
from typing import Any

from sdexport.checkpoints.errors import CheckpointError
from sdrun.errors import ModelFolderError
from sdrun.folder_files import MAX_TEXT_FILE_BYTES, parse_json

# What to do about a file that is damaged, or written to make its reader hang or run out of memory.
_FIX = "get the model again from its publisher"


def parse_json_text(text: str, where: str) -> Any:
    """`text` as JSON with bounded numbers and nesting; a CheckpointError naming `where` otherwise."""
    try:
        return parse_json(text, where)
    except ModelFolderError as error:
        raise CheckpointError(f"{error}; {_FIX}") from None


def read_json_file(path: Path, where: str, limit: int = MAX_TEXT_FILE_BYTES, kind: str = "a config") -> Any:
    """The JSON in the file at `path` (named `where` in errors), refused past `limit` bytes as too large
    for `kind`, and parsed as `parse_json_text` parses it."""
    try:
        with path.open("rb") as file:
            raw = file.read(limit + 1)
    except OSError as error:
        raise CheckpointError(f"cannot read {where}: {error.strerror or error}") from None
    if len(raw) > limit:
        raise CheckpointError(f"{where} is over {limit >> 20} MiB, too large for {kind}; {_FIX}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise CheckpointError(f"{where} is not UTF-8 text ({error.reason}); {_FIX}") from None
    return parse_json_text(text, where)


def read_json_object(path: Path, where: str) -> dict[str, Any]:
    """The JSON object in the file at `path`, read as `read_json_file` reads it."""
    data = read_json_file(path, where)
    if not isinstance(data, dict):
        raise CheckpointError(f"{where} is not a JSON object")
    return data
