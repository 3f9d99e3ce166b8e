"""Reading tensor files without running code: safetensors, and pickles through torch's weights-only loader;
one file, or the parts of a sharded checkpoint that its index names.

A pickle can name any Python callable and have it called while loading, so `.ckpt`/`.bin` files are only
ever opened with `torch.load(weights_only=True)`, which admits tensors and plain containers and refuses
everything else. PyTorch Lightning checkpoints also pickle trainer state (callback classes, numpy
scalars) beside the weights; those few names are bound to an inert placeholder so such files load, and
the placeholder never reaches the weights.
"""

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from sdexport.checkpoints.errors import CheckpointError
from sdexport.checkpoints.json_files import read_json_file

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
SAFETENSORS_SUFFIX = ".safetensors"
# The index of a sharded checkpoint lists one line per tensor: a few hundred kB for the largest UNets.
MAX_INDEX_BYTES = 16 * 2**20

# Trainer state pickled beside the weights by the checkpoints of the original training runs.
_TRAINER_STATE_GLOBALS = (
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
    "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint",
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
    "numpy.dtype",
    "_codecs.encode",
)


class _TrainerState:
    """Stands in for any trainer-state class or function: takes every argument, keeps nothing."""

    def __new__(cls, *args: Any, **kwargs: Any) -> "_TrainerState":
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


def read_tensor_file(path: Path) -> dict[str, Any]:
    """The top-level mapping stored in a `.safetensors` or pickled (`.ckpt`, `.pt`, `.pth`, `.bin`) file."""
    suffix = path.suffix.lower()
    if suffix == SAFETENSORS_SUFFIX:
        return _read_safetensors(path)
    if suffix in PICKLE_SUFFIXES:
        return _read_pickle(path)
    raise CheckpointError(
        f"unsupported file type '{path.suffix}': expected .safetensors, .ckpt (.pt, .pth, .bin) "
        "or a diffusers folder"
    )


def _read_safetensors(path: Path) -> dict[str, Any]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError) as error:
        raise CheckpointError(
            f"not a readable safetensors file (truncated or corrupt?): {_first_line(error)}"
        ) from None


def _read_pickle(path: Path) -> dict[str, Any]:
    # Memory-mapping needs the zip container of torch.save; the legacy format is read whole.
    mmap = zipfile.is_zipfile(path)
    placeholders = [(_TrainerState, name) for name in _TRAINER_STATE_GLOBALS]
    try:
        with torch.serialization.safe_globals(placeholders):
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        refused = re.search(r"GLOBAL (\S+)", str(error))
        if refused:
            raise CheckpointError(
                f"refused to unpickle {refused.group(1)}: only tensors and plain data are read, as loading "
                "other Python objects can run code; use a .safetensors copy from a source you trust"
            ) from None
        raise CheckpointError(
            f"not a PyTorch checkpoint that can be read safely: {_unpickling_detail(error)}"
        ) from None
    except Exception as error:  # whatever a damaged file makes torch.load raise
        raise CheckpointError(
            f"not a readable PyTorch checkpoint (truncated or corrupt?): {_first_line(error)}"
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"holds a {type(obj).__name__}, not a dictionary of tensors")
    return obj


def read_sharded(index: Path) -> dict[str, Any]:
    """The tensors of a sharded checkpoint: every part that its index names, each read like a single file.

    The index (`<name>.safetensors.index.json`, `<name>.bin.index.json`, or `.index.fp16.json` for the
    fp16 variant) is untrusted JSON: its parts must be plain file names in its own format that lie beside
    it (links followed, as in the Hugging Face cache, where both lead to the same blobs folder), and each
    tensor it lists must be in the part it names.
    """
    where = f"{index.parent.name}/{index.name}"
    weight_map = _read_weight_map(index, where)
    suffix = SAFETENSORS_SUFFIX if f"{SAFETENSORS_SUFFIX}.index." in index.name else ".bin"
    tensors: dict[str, Any] = {}
    found_in: dict[str, str] = {}
    for name in sorted(set(weight_map.values())):
        path = _part_path(index, name, suffix, where)
        try:
            part = read_tensor_file(path)
        except CheckpointError as error:
            raise CheckpointError(f"{where}: part {name}: {error}") from None
        twice = sorted(part.keys() & tensors.keys())
        if twice:
            raise CheckpointError(f"{where}: {twice[0]} is in both {found_in[twice[0]]} and {name}")
        tensors.update(part)
        found_in.update(dict.fromkeys(part, name))
    misplaced = [key for key, name in weight_map.items() if found_in.get(key) != name]
    if misplaced:
        key = misplaced[0]
        raise CheckpointError(
            f"{where} lists {key} in {weight_map[key]}, which does not hold it "
            f"({len(misplaced)} such tensors); the parts do not belong to this index"
        )
    return tensors


def _read_weight_map(index: Path, where: str) -> dict[str, str]:
    """The index's `weight_map` (tensor name -> part file name), read within MAX_INDEX_BYTES."""
    data = read_json_file(index, where, MAX_INDEX_BYTES, kind="an index")
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{where} has no weight_map (tensor name -> part file) as an index has")
    odd = [name for name in weight_map.values() if not isinstance(name, str)]
    if odd:
        raise CheckpointError(f"{where} names a part {str(odd[0])[:80]}, which is not a file name")
    return weight_map


def _part_path(index: Path, name: str, suffix: str, where: str) -> Path:
    """The part file `name` beside `index`, refused unless it is a plain file name of the index's format."""
    plain = name not in ("", ".", "..") and Path(name).name == name and "\\" not in name
    if not plain or not name.endswith(suffix):
        raise CheckpointError(
            f"{where} names the part {name[:80]!r}; a part must be a {suffix} file beside the index"
        )
    path = index.parent / name
    if not path.is_file():
        raise CheckpointError(f"{where} names the part {name}, which is missing")
    if path.resolve().parent != index.resolve().parent:
        raise CheckpointError(f"{where}: the part {name} links outside the folder of its index")
    return path


def _unpickling_detail(error: pickle.UnpicklingError) -> str:
    """What torch's weights-only loader refused, without its advice on loading the file unsafely."""
    message = str(error).split("WeightsUnpickler error:", 1)[-1]
    advice = ("Weights only load failed", "Check the documentation", "Please file an issue", "(1)", "(2)")
    details = [
        line.strip() for line in message.splitlines() if line.strip() and not line.strip().startswith(advice)
    ]
    return details[0] if details else "unreadable pickle"


def _first_line(error: BaseException) -> str:
    """The first sentence of an error message (torch's go on with advice)."""
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0].split(". ")[0]
