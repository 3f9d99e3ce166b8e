"""Names shared by the export tests and their fixtures."""

from pathlib import Path
from typing import NamedTuple

from sdexport.checkpoints import LoadedModel

STALE_FILE = "left-from-an-older-build.txt"


class Built(NamedTuple):
    folder: Path
    log: list[str]
    loaded: LoadedModel
