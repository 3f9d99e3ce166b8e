"""Reading tensor files without running code: safetensors, and pickles through torch's weights-only loader.

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

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
SAFETENSORS_SUFFIX = ".safetensors"

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
