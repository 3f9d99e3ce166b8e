"""The embedded tiny-shapes model built through the real `sdexport build`, once per test session."""

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from sdexport.cli import EMBEDDED_CHECKPOINT, main
from sdexport.tiny.shapes import IMAGE_SIZE, Scene, all_scenes, judge
from sdrun.pipeline import Pipeline

# 60 captions spread over the whole grammar (every third), each with its own seed.
ADHERENCE_SET: list[tuple[Scene, int]] = [(scene, 1000 + k) for k, scene in enumerate(all_scenes()[::3])]


def _build(folder: Path, *options: str) -> Path:
    assert EMBEDDED_CHECKPOINT.is_file(), f"{EMBEDDED_CHECKPOINT} is missing: the package must ship it"
    result = CliRunner().invoke(main, ["build", "--output", str(folder), *options])
    assert result.exit_code == 0, result.output
    return folder


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("tiny") / "tiny-shapes")


@pytest.fixture(scope="session", params=["int8", "int8-compact"])
def tiny_int8_folder(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    """The embedded model built with each int8 quantization."""
    name = f"tiny-shapes-{request.param}"
    return _build(tmp_path_factory.mktemp(name) / name, "--quantize", request.param)


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_folder: Path) -> Pipeline:
    return Pipeline.load(tiny_folder, provider="cpu")


def _adherence(pipeline: Pipeline, **settings: object) -> float:
    """Share of ADHERENCE_SET whose picture the pixel judge reads as the right shape, colour, background."""
    right = 0
    for scene, seed in ADHERENCE_SET:
        result = pipeline.generate(scene.caption, seed=seed, height=IMAGE_SIZE, width=IMAGE_SIZE, **settings)
        right += judge(np.asarray(result.images[0])).matches(scene)
    return right / len(ADHERENCE_SET)


@pytest.fixture(scope="session")
def adherence() -> Callable[..., float]:
    """adherence(pipeline, **settings) -> share of the fixed prompt set drawn right (unset: the model's)."""
    return _adherence
