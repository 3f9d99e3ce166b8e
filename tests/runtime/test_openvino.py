"""`--provider openvino`: the embedded model on onnxruntime's OpenVINO execution provider, against
onnxruntime's CPU provider in f32.

The onnxruntime-openvino wheel replaces the onnxruntime package, so it lives in its own environment
(.venv/openvino, made by `scripts/setup.sh test`, no torch); the OpenVINO side runs there in a subprocess
(tests/runtime/openvino_probe.py) and the references here, with the main environment's onnxruntime.
"""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from openvino_probe import GRAPHS, graph_feeds

from sdexport import embedded
from sdexport.cli import main as sdexport_main
from sdrun.errors import ProviderError
from sdrun.openvino import (
    BF16_CPU_FLAGS,
    CACHE_ENV,
    PRECISION_ENV,
    cache_folder,
    cpu_has_bf16,
    inference_precision,
    provider_options,
)
from sdrun.pipeline import Pipeline
from sdrun.providers import requested_providers

ROOT = Path(__file__).resolve().parents[2]
OPENVINO_PYTHON = ROOT / ".venv" / "openvino" / "bin" / "python"
PROBE = Path(__file__).with_name("openvino_probe.py")
PROMPT, SEED = "a large red circle on a blue background", 3
OPENVINO, CPU = "OpenVINOExecutionProvider", "CPUExecutionProvider"
# Relative L2 error of each graph's output against the CPU provider's f32, measured on this model (AMD
# EPYC Zen 5 with AVX512_BF16, onnxruntime-openvino 1.24.1, 2026-12-01): f32 at most 6.2e-7, bf16 from
# 1.9e-3 (text encoder) to 6.1e-3 (VAE decoder): bf16 keeps 8 bits of mantissa.
F32_RELATIVE = 1e-5
BF16_RELATIVE = 2e-2
# The same seed's picture (20 steps of the model's sampler) against the CPU provider's, in 0-255 levels:
# (mean absolute difference, its 99th percentile over pixels and channels, largest). Measured on seeds 3, 4,
# 7 and 10 (same machine and wheel, 2026-12-07): f32 at most (0.000, 0, 1); bf16 (0.22-0.28, 2-3, 4-9).
# The next seed's picture (SEED + 1: of the pairs of consecutive seeds from 0 to 11, the closest) differs by
# (4.9, 126, 183), OTHER_SEED_FACTOR times bf16's bounds and more (the old bound, (1.0, 24) on mean and
# largest, was within 5x of it on the mean).
F32_LEVELS = (0.5, 1, 2)
BF16_LEVELS = (0.5, 6, 16)
OTHER_SEED_FACTOR = 8


def _relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def test_precision_follows_the_cpu_and_the_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with_bf16, without = tmp_path / "zen5", tmp_path / "old"
    with_bf16.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16 avx512_vnni\n\n")
    without.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n\n")
    assert cpu_has_bf16(with_bf16) and not cpu_has_bf16(without)
    assert not cpu_has_bf16(tmp_path / "missing")

    monkeypatch.setenv(PRECISION_ENV, "f32")
    assert inference_precision() == "f32" and inference_precision("bf16") == "bf16"
    monkeypatch.setenv(PRECISION_ENV, "bf32")
    with pytest.raises(ProviderError, match="choose one of auto, bf16, f32"):
        inference_precision()
    monkeypatch.delenv(PRECISION_ENV)
    assert inference_precision() == ("bf16" if cpu_has_bf16() else "f32")


def test_cache_folder_is_the_users_and_opt_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_folder() == tmp_path / "sdrun" / "openvino"
    monkeypatch.delenv(CACHE_ENV, raising=False)
    assert "cache_dir" not in provider_options("f32")
    monkeypatch.setenv(CACHE_ENV, "1")
    assert provider_options("f32")["cache_dir"] == str(tmp_path / "sdrun" / "openvino")
    hint = {"CPU": {"INFERENCE_PRECISION_HINT": "bf16"}}
    assert json.loads(provider_options("bf16")["load_config"]) == hint
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_folder() == Path.home() / ".cache" / "sdrun" / "openvino"


def test_plain_onnxruntime_says_how_to_get_the_provider() -> None:
    with pytest.raises(ProviderError, match=r"no OpenVINO execution provider \(install onnxruntime-openvino"):
        requested_providers("openvino", {})


def test_build_refuses_int8_for_openvino(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        sdexport_main, ["build", "--target", "openvino", "--quantize", "int8", "-o", str(tmp_path / "x")]
    )
    assert result.exit_code == 1 and "--target openvino builds fp32 graphs" in result.output


@pytest.fixture(scope="module")
def openvino_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded model, built for OpenVINO (checked against PyTorch by the other build tests)."""
    assert embedded.CHECKPOINT.is_file(), f"{embedded.CHECKPOINT} is missing: the package must ship it"
    folder = tmp_path_factory.mktemp("openvino") / "tiny-shapes"
    # Named as SOURCE, the embedded model is built without its few-step student, which these tests don't use.
    options = ["build", str(embedded.CHECKPOINT), "--target", "openvino", "--skip-validation"]
    options += ["--output", str(folder)]
    result = CliRunner().invoke(sdexport_main, options)
    assert result.exit_code == 0, result.output
    return folder


def test_openvino_build_keeps_plain_attention(openvino_folder: Path) -> None:
    manifest = json.loads((openvino_folder / "sdexport_manifest.json").read_text())
    assert manifest["target"] == "openvino"
    for component in GRAPHS:
        assert manifest["components"][component]["fused_attentions"] == 0
        graph = onnx.load(openvino_folder / component / "model.onnx", load_external_data=False)
        assert not [node.op_type for node in graph.graph.node if node.domain == "com.microsoft"], component


def _feeds(folder: Path) -> dict[str, np.ndarray]:
    """Inputs for each graph, keyed "component/input": the prompt's tokens, random latents, states and
    pictures of the model's size."""
    pipeline = Pipeline.load(folder, provider="cpu")
    rng = np.random.default_rng(0)
    size = pipeline.facts.default_size
    side, channels = size // pipeline.facts.vae_factor, pipeline.facts.latent_channels
    context_dim = json.loads((folder / "unet" / "config.json").read_text())["cross_attention_dim"]
    return {
        "text_encoder/input_ids": pipeline.tokenizer.encode([PROMPT, ""]),
        "unet/sample": rng.standard_normal((2, channels, side, side), dtype=np.float32),
        "unet/timestep": np.array(500.0, dtype=np.float32),
        "unet/encoder_hidden_states": rng.standard_normal((2, 77, context_dim), dtype=np.float32),
        "vae_encoder/sample": rng.uniform(-1, 1, (1, 3, size, size)).astype(np.float32),
        "vae_decoder/latent_sample": rng.standard_normal((1, channels, side, side), dtype=np.float32),
    }


def _cpu_outputs(folder: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each graph's first output on onnxruntime's CPU provider (the main environment's onnxruntime)."""
    outputs = {}
    for component in GRAPHS:
        session = ort.InferenceSession(str(folder / component / "model.onnx"), providers=[CPU])
        (outputs[component],) = session.run([session.get_outputs()[0].name], graph_feeds(feeds, component))
    return outputs


@pytest.fixture(scope="module")
def probe(openvino_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The OpenVINO side, run once in the onnxruntime-openvino environment, its compiled-model cache on
    in a folder of its own."""
    if not OPENVINO_PYTHON.is_file():
        pytest.skip(f"no onnxruntime-openvino environment at {OPENVINO_PYTHON} (scripts/setup.sh test)")
    out = tmp_path_factory.mktemp("probe")
    feeds = _feeds(openvino_folder)
    np.savez(out / "inputs.npz", **feeds)
    env = {**os.environ, "XDG_CACHE_HOME": str(out / "cache"), CACHE_ENV: "1"}
    env["PYTHONPATH"] = str(ROOT / "runtime")
    env.pop(PRECISION_ENV, None)
    command = [str(OPENVINO_PYTHON), str(PROBE), str(openvino_folder), str(out / "inputs.npz"), str(out)]
    done = subprocess.run([*command, PROMPT, str(SEED)], env=env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0 and "no OpenVINO execution provider" in done.stderr:
        reason = done.stderr.strip().splitlines()[-1]
        pytest.skip(f"onnxruntime's OpenVINO provider cannot load here: {reason}")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    with np.load(out / "outputs.npz") as arrays:
        report["arrays"] = dict(arrays)
    report["cpu"] = _cpu_outputs(openvino_folder, feeds)
    report["cache"] = out / "cache" / "sdrun" / "openvino"
    return report


def _skip_unless_run(probe: dict, precision: str) -> None:
    if precision not in probe["runs"]:
        flags = " or ".join(sorted(BF16_CPU_FLAGS))
        pytest.skip(f"this CPU has no bfloat16 arithmetic (no {flags} in /proc/cpuinfo)")


def test_every_node_runs_on_openvino(probe: dict) -> None:
    assert OPENVINO in probe["available"], probe["available"]
    for precision, run in probe["runs"].items():
        assert run["placement"] == {component: [OPENVINO] for component in GRAPHS}, precision
        assert run["pipeline provider"] == "openvino" and run["warnings"] == [], precision
        assert all(providers[0] == OPENVINO for providers in run["pipeline"].values()), run["pipeline"]
        assert set(run["pipeline"]) == {"text_encoder", "unet", "vae_decoder"}


@pytest.mark.parametrize(("precision", "limit"), [("f32", F32_RELATIVE), ("bf16", BF16_RELATIVE)])
def test_graph_outputs_match_the_cpu_provider(probe: dict, precision: str, limit: float) -> None:
    _skip_unless_run(probe, precision)
    errors = {
        component: _relative_error(probe["arrays"][f"{precision}/{component}"], probe["cpu"][component])
        for component in GRAPHS
    }
    assert max(errors.values()) < limit, errors
    if precision == "bf16":
        # bf16 did run (an f32 run would match to 1e-6): the hint reached OpenVINO's CPU plugin.
        assert max(errors.values()) > 10 * F32_RELATIVE, errors


def _levels(image: np.ndarray, reference: np.ndarray) -> tuple[float, float, float]:
    """(mean, 99th percentile, largest) absolute difference in 0-255 levels."""
    assert image.shape == reference.shape
    difference = np.abs(image.astype(np.float64) - reference)
    return float(difference.mean()), float(np.percentile(difference, 99)), float(difference.max())


@pytest.fixture(scope="module")
def cpu_pictures(openvino_folder: Path) -> dict[int, np.ndarray]:
    """The CPU provider's f32 pictures of SEED and of the next seed."""
    pipeline = Pipeline.load(openvino_folder, "cpu")
    return {seed: np.asarray(pipeline.generate(PROMPT, seed=seed).images[0]) for seed in (SEED, SEED + 1)}


@pytest.mark.parametrize(("precision", "limit"), [("f32", F32_LEVELS), ("bf16", BF16_LEVELS)])
def test_same_seed_same_picture(
    probe: dict, cpu_pictures: dict[int, np.ndarray], precision: str, limit: tuple[float, float, float]
) -> None:
    _skip_unless_run(probe, precision)
    reference = cpu_pictures[SEED]
    measured = _levels(probe["arrays"][f"{precision}/image"], reference)
    assert all(got <= bound for got, bound in zip(measured, limit, strict=True)), measured
    # The bound's power: another seed's picture is far past it on each measure.
    other = _levels(cpu_pictures[SEED + 1], reference)
    assert all(got > OTHER_SEED_FACTOR * bound for got, bound in zip(other, limit, strict=True)), other


def test_auto_picks_openvino_for_folders_that_run_whole_on_it(probe: dict) -> None:
    decisions = probe["decisions"]
    assert decisions["auto"] == OPENVINO
    assert decisions["auto, onnxruntime target"] == CPU and decisions["auto, no manifest"] == CPU
    assert "int8 folders hold onnxruntime's DynamicQuantizeMatMul" in decisions["int8"]
    assert len(decisions["fused warnings"]) == 1 and "--target openvino" in decisions["fused warnings"][0]


def test_compiled_models_are_cached(probe: dict) -> None:
    assert probe["cache"].is_dir() and any(probe["cache"].iterdir()), probe["cache"]
