"""Running the `sdrun` command in this process (click's CliRunner) and reading what it wrote: shared by the
CLI tests, whose every error must be one "Error: ..." line on stderr with no traceback."""

from pathlib import Path

import numpy as np
from click.testing import CliRunner, Result
from PIL import Image

from sdrun.cli import main


def run_cli(*args: object) -> Result:
    return CliRunner().invoke(main, [str(arg) for arg in args])


def png_pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image, dtype=np.int16)


def png_parameters(path: Path) -> str:
    with Image.open(path) as image:
        return image.text["parameters"]


def assert_one_line_error(result: Result, message: str) -> None:
    assert result.exit_code != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and message in errors[0], result.output
    assert "Traceback" not in result.output
