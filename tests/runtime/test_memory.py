"""The low-memory policy on the optimum-exported tiny model: the same images as the default policy, each
session open only for its stage, the session options it asks for; tiled decoding when asked or past the
size."""

import weakref
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from sdrun import memory
from sdrun import pipeline as pipeline_module
from sdrun.cli import main
from sdrun.errors import SettingsError
from sdrun.pipeline import Pipeline
from sdrun.tiled_vae import DEFAULT_TILE

PROMPT = "a small red cube"
ARGS = {"steps": 4, "seed": 3, "negative_prompt": "dark", "num_images": 2}


@pytest.fixture(scope="module")
def default(tiny_onnx_dir: Path) -> Pipeline:
    return Pipeline.load(tiny_onnx_dir, provider="cpu")


@pytest.fixture(scope="module")
def low_memory(tiny_onnx_dir: Path) -> Pipeline:
    return Pipeline.load(tiny_onnx_dir, provider="cpu", low_memory=True)


def _max_difference(a: Image.Image, b: Image.Image) -> int:
    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())


class _Recorder:
    """Stands in for a session and records the shape of the rank-4 input of each call."""

    def __init__(self, session) -> None:  # noqa: ANN001
        self._session = session
        self.shapes: list[tuple[int, ...]] = []

    def run(self, outputs, feeds):  # noqa: ANN001, ANN201 - onnxruntime's signature
        self.shapes.append(next(value.shape for value in feeds.values() if value.ndim == 4))
        return self._session.run(outputs, feeds)

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self._session, name)


@pytest.mark.parametrize("sampler", ["euler_a", "dpmpp_2m"])
def test_low_memory_images_match_the_default(default: Pipeline, low_memory: Pipeline, sampler: str) -> None:
    ours = low_memory.generate(PROMPT, sampler=sampler, **ARGS).images
    reference = default.generate(PROMPT, sampler=sampler, **ARGS).images
    # The guidance pair runs as two calls instead of one batch: float rounding, at most a level.
    assert all(_max_difference(a, b) <= 1 for a, b in zip(ours, reference, strict=True))


def test_low_memory_image_to_image_matches_the_default(default: Pipeline, low_memory: Pipeline) -> None:
    init = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    args = {**ARGS, "init_image": init, "strength": 0.6}
    (ours, _), (reference, _) = (p.generate(PROMPT, **args).images for p in (low_memory, default))
    assert _max_difference(ours, reference) <= 1


def test_each_session_is_open_only_for_its_stage(tiny_onnx_dir: Path, monkeypatch) -> None:
    low_memory = Pipeline.load(tiny_onnx_dir, provider="cpu", low_memory=True)
    opened: list[str] = []
    open_graph = low_memory.sessions._open_graph
    monkeypatch.setattr(
        low_memory.sessions, "_open_graph", lambda name: opened.append(name) or open_graph(name)
    )
    open_during_steps: set[tuple[str, ...]] = set()
    low_memory.generate(
        PROMPT, callback=lambda s, t, x: open_during_steps.add(tuple(low_memory._graphs)), **ARGS
    )
    assert open_during_steps == {("unet",)}
    assert low_memory._graphs == {}
    # Two images, each session opened once (the text encoder was opened at load).
    assert opened == ["unet", "vae_decoder"]

    init = Image.new("RGB", (64, 64), (30, 90, 200))
    low_memory.generate(PROMPT, init_image=init, strength=0.5, **ARGS)
    assert low_memory._graphs == {}


def test_a_released_session_is_freed_even_while_its_graph_is_still_referenced(
    low_memory: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    trims = []
    monkeypatch.setattr(memory, "release_freed_memory", lambda: trims.append(1))
    with low_memory.sessions.use("text_encoder") as text_encoder:
        session = weakref.ref(text_encoder.session)
    # `text_encoder` still names the graph, as a caller's local variable does until its function returns.
    assert session() is None, "the released session's weights would stay resident"
    assert trims == [1], "the freed heap is handed back to the system"
    with pytest.raises(RuntimeError, match="released"):
        text_encoder.run({text_encoder.input_of_rank(2): np.zeros((1, 77), dtype=np.int64)})


def test_only_the_low_memory_policy_fixes_the_heaps_mmap_threshold(
    tiny_onnx_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    thresholds = []
    monkeypatch.setattr(pipeline_module, "set_mmap_threshold", thresholds.append)
    Pipeline.load(tiny_onnx_dir, provider="cpu")
    assert thresholds == []
    Pipeline.load(tiny_onnx_dir, provider="cpu", low_memory=True)
    assert thresholds == [256 * 1024]


def test_default_policy_keeps_its_sessions(tiny_onnx_dir: Path) -> None:
    pipeline = Pipeline.load(tiny_onnx_dir, provider="cpu")
    assert set(pipeline._graphs) == {"text_encoder", "unet", "vae_decoder"}
    pipeline.generate(PROMPT, init_image=Image.new("RGB", (64, 64)), strength=0.5, **ARGS)
    assert set(pipeline._graphs) == {"text_encoder", "unet", "vae_decoder", "vae_encoder"}


def test_session_options_follow_the_policy(default: Pipeline, low_memory: Pipeline) -> None:
    import onnxruntime as ort

    unet = low_memory.sessions.get("unet").session.get_session_options()
    low_memory.sessions.release("unet")
    assert unet.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert unet.execution_order == ort.ExecutionOrder.PRIORITY_BASED
    assert not unet.enable_cpu_mem_arena and not unet.enable_mem_pattern
    options = default._graphs["unet"].session.get_session_options()
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert options.execution_order == ort.ExecutionOrder.DEFAULT
    assert not options.enable_cpu_mem_arena


def test_fast_policy_is_the_default_with_the_arena(tiny_onnx_dir: Path) -> None:
    fast = Pipeline.load(tiny_onnx_dir, provider="cpu", fast=True)
    assert set(fast._graphs) == {"text_encoder", "unet", "vae_decoder"}
    options = fast._graphs["unet"].session.get_session_options()
    assert options.enable_cpu_mem_arena and options.enable_mem_pattern
    with pytest.raises(SettingsError, match="choose one"):
        Pipeline.load(tiny_onnx_dir, provider="cpu", fast=True, low_memory=True)


def _decoder_calls(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, size: int) -> list[tuple[int, ...]]:
    recorder = _Recorder(pipeline.sessions.get("vae_decoder").session)
    monkeypatch.setattr(pipeline.sessions.get("vae_decoder"), "session", recorder)
    image = pipeline.decode(np.zeros((1, 4, size // 8, size // 8), dtype=np.float32))[0]
    assert image.size == (size, size)
    monkeypatch.undo()
    return recorder.shapes


def test_tiled_decoding_when_asked_or_past_the_size(tiny_onnx_dir: Path, monkeypatch) -> None:
    large = (DEFAULT_TILE + 8) * 8  # latent sides just past one tile
    tiled = Pipeline.load(tiny_onnx_dir, provider="cpu", tiled_vae=True)
    assert _decoder_calls(tiled, monkeypatch, large) == [(1, 4, DEFAULT_TILE, DEFAULT_TILE)] * 4
    untiled = Pipeline.load(tiny_onnx_dir, provider="cpu", tiled_vae=False)
    assert _decoder_calls(untiled, monkeypatch, large) == [(1, 4, large // 8, large // 8)]
    automatic = Pipeline.load(tiny_onnx_dir, provider="cpu")
    assert len(_decoder_calls(automatic, monkeypatch, large)) == 1
    assert len(_decoder_calls(automatic, monkeypatch, 1024)) > 1


def test_cli_low_memory_writes_the_default_image(tiny_onnx_dir: Path, tmp_path: Path) -> None:
    images = []
    for name, flags in (("default", []), ("low", ["--low-memory"])):
        out = tmp_path / f"{name}.png"
        args = [PROMPT, "--model", tiny_onnx_dir, "--seed", 5, "--steps", 3, "--out", out, "--quiet", *flags]
        result = CliRunner().invoke(main, [str(arg) for arg in args])
        assert result.exit_code == 0, result.output
        images.append(Image.open(out))
    assert _max_difference(*images) <= 1
