"""The embedded tiny-shapes model built through the real `sdexport build`, once per test session."""

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from sdexport import embedded
from sdexport.cli import STUDENT_SUFFIX, main
from sdexport.tiny.shapes import IMAGE_SIZE, Scene, all_scenes, judge
from sdrun.pipeline import Pipeline

# 60 captions spread over the whole grammar (every third), each with its own seed.
ADHERENCE_SET: list[tuple[Scene, int]] = [(scene, 1000 + k) for k, scene in enumerate(all_scenes()[::3])]
# 60 other captions and seeds, never looked at while the model or its training was tuned.
HELD_OUT_SET: list[tuple[Scene, int]] = [(scene, 20_000 + k) for k, scene in enumerate(all_scenes()[1::3])]


def _build(folder: Path, *options: str) -> Path:
    assert embedded.CHECKPOINT.is_file(), f"{embedded.CHECKPOINT} is missing: the package must ship it"
    result = CliRunner().invoke(main, ["build", "--output", str(folder), *options])
    assert result.exit_code == 0, result.output
    return folder


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded model; `sdexport build` puts its few-step student beside it (tiny_student_folder)."""
    return _build(tmp_path_factory.mktemp("tiny") / "tiny-shapes")


@pytest.fixture(scope="session")
def tiny_student_folder(tiny_folder: Path) -> Path:
    student = tiny_folder.with_name(tiny_folder.name + STUDENT_SUFFIX)
    assert student.is_dir(), "sdexport build with no SOURCE must build the embedded student beside the model"
    return student


@pytest.fixture(scope="session")
def int8_builds(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """build(quantization) -> the embedded model built with it, once a session. A parametrized session
    fixture would be torn down and built again each time pytest moves between its parameters (once per
    test file using it), and one int8 build takes minutes here."""
    built: dict[str, Path] = {}

    def build(quantization: str) -> Path:
        if quantization not in built:
            name = f"tiny-shapes-{quantization}"
            folder = tmp_path_factory.mktemp(name) / name
            # Named as SOURCE, the embedded model is built without its few-step student (int8 tests the
            # teacher), which halves the build.
            built[quantization] = _build(folder, str(embedded.CHECKPOINT), "--quantize", quantization)
        return built[quantization]

    return build


@pytest.fixture(params=["int8", "int8-compact"])
def tiny_int8_folder(int8_builds: Callable[[str], Path], request: pytest.FixtureRequest) -> Path:
    """The embedded model built with each int8 quantization."""
    return int8_builds(request.param)


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_folder: Path) -> Pipeline:
    return Pipeline.load(tiny_folder, provider="cpu")


def _adherence(
    pipeline: Pipeline, prompts: list[tuple[Scene, int]] = ADHERENCE_SET, **settings: object
) -> float:
    """Share of `prompts` whose picture the pixel judge reads as the right shape, colour, background."""
    right = 0
    for scene, seed in prompts:
        result = pipeline.generate(scene.caption, seed=seed, height=IMAGE_SIZE, width=IMAGE_SIZE, **settings)
        right += judge(np.asarray(result.images[0])).matches(scene)
    return right / len(prompts)


@pytest.fixture(scope="session")
def adherence() -> Callable[..., float]:
    """adherence(pipeline, [prompts], **settings) -> share of the fixed prompt set (or `prompts`) drawn
    right (settings unset: the model's)."""
    return _adherence
