"""The CUDA execution provider end to end, where onnxruntime offers it (skipped elsewhere).

On a GPU machine without diffusers or optimum, point SDRUN_TINY_ONNX_DIR at an exported tiny folder:
    SDRUN_TINY_ONNX_DIR=DIR python -m pytest tests/runtime/test_pipeline_cuda.py
"""

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from PIL import Image

from sdrun.cli import main
from sdrun.pipeline import Pipeline

pytestmark = pytest.mark.skipif(
    "CUDAExecutionProvider" not in ort.get_available_providers(), reason="this onnxruntime offers no CUDA"
)
# The CPU result is the reference. onnxruntime's CUDA provider runs float32 convolutions and products in
# TF32 (10-bit mantissas) by default, and sums in other orders: single pixels move by a few levels, the
# image as a whole must not. Seen on an H200: at most 2 levels on the tiny random model, 5 on the embedded
# tiny-shapes model (dpmpp_2m_karras, whose last steps are the smallest).
MAX_LEVEL_DIFFERENCE = 8
MAX_MEAN_LEVEL_DIFFERENCE = 0.5


@pytest.fixture(scope="module")
def on_cpu(tiny_onnx_dir: Path) -> Pipeline:
    return Pipeline.load(tiny_onnx_dir, provider="cpu")


@pytest.fixture(scope="module")
def on_cuda(tiny_onnx_dir: Path) -> Pipeline:
    return Pipeline.load(tiny_onnx_dir, provider="cuda")


def _assert_close(ours: Image.Image, reference: Image.Image) -> None:
    levels = _levels(ours, reference)
    assert levels.max() <= MAX_LEVEL_DIFFERENCE
    assert levels.mean() <= MAX_MEAN_LEVEL_DIFFERENCE


def _levels(a: Image.Image, b: Image.Image) -> np.ndarray:
    return np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16))


def test_every_session_runs_on_cuda(on_cuda: Pipeline, tiny_onnx_dir: Path) -> None:
    assert on_cuda.provider == "cuda"
    on_cuda.generate("warm up", steps=2, seed=0, init_image=Image.new("RGB", (64, 64)))
    assert {g.session.get_providers()[0] for g in on_cuda._graphs.values()} == {"CUDAExecutionProvider"}
    assert len(on_cuda._graphs) == 4
    assert Pipeline.load(tiny_onnx_dir).provider == "cuda"


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras"])
def test_cuda_images_match_cpu_images(on_cpu: Pipeline, on_cuda: Pipeline, sampler: str) -> None:
    args = {"steps": 12, "seed": 21, "sampler": sampler, "negative_prompt": "dark", "num_images": 2}
    for ours, reference in zip(
        on_cuda.generate("a red cube", **args).images,
        on_cpu.generate("a red cube", **args).images,
        strict=True,
    ):
        _assert_close(ours, reference)


def test_cuda_image_to_image_matches_cpu(on_cpu: Pipeline, on_cuda: Pipeline) -> None:
    init = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 80, 3), dtype=np.uint8))
    args = {"steps": 10, "seed": 2, "sampler": "euler", "init_image": init, "strength": 0.7}
    ours, reference = (
        on_cuda.generate("a cube", **args).images[0],
        on_cpu.generate("a cube", **args).images[0],
    )
    assert ours.size == (80, 48)
    _assert_close(ours, reference)


def test_cli_on_cuda(tiny_onnx_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "cuda.png"
    result = CliRunner().invoke(
        main,
        ["a cube", "--model", str(tiny_onnx_dir), "--provider", "cuda", "--steps", "4", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert "CUDA execution provider" in result.stderr
    assert out.is_file()
