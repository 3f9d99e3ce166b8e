"""Names shared by the export tests and their fixtures."""

from pathlib import Path
from typing import NamedTuple

from sdexport.checkpoints import LoadedModel

STALE_FILE = "left-from-an-older-build.txt"
# float32 graphs against float32 PyTorch from another codebase: summation order differs, nothing else.
ATOL = 1e-4
# sdrun on two float32 exports of the same weights (optimum's and ours): summation order differs only.
OPTIMUM_LATENT_RTOL = 1e-4


class Built(NamedTuple):
    folder: Path
    log: list[str]
    loaded: LoadedModel
