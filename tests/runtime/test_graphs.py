"""Graph: inputs fed in the graph's own dtypes, and values placed with `resident` bound where they are."""

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from sdrun.graphs import Graph, GraphInput


@pytest.fixture(scope="module")
def unet(tiny_onnx_dir: Path) -> Graph:
    graph = tiny_onnx_dir / "unet" / "model.onnx"
    return Graph("unet", ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"]))


def _feeds(unet: Graph) -> dict[GraphInput, np.ndarray]:
    rng = np.random.default_rng(0)
    sample, timestep, context = unet.input_of_rank(4), unet.input_of_rank(0, 1), unet.input_of_rank(3)
    batch = 2
    channels = sample.shape[1]
    fixed = timestep.shape[0] if timestep.rank else None
    steps = () if timestep.rank == 0 else (fixed if isinstance(fixed, int) else batch,)
    return {
        sample: rng.standard_normal((batch, channels, 8, 8)),  # float64: run casts to the graph's dtype
        timestep: np.full(steps, 500.0),
        context: rng.standard_normal((batch, 77, context.shape[2])),
    }


def test_a_bound_value_gives_the_output_of_a_copied_one(unet: Graph) -> None:
    feeds = _feeds(unet)
    context = unet.input_of_rank(3)
    copied = unet.run(feeds)
    # On the CPU `resident` returns the array, so the OrtValue is made here to take the binding path.
    placed = ort.OrtValue.ortvalue_from_numpy(feeds[context].astype(context.dtype))
    bound = unet.run({**feeds, context: placed})
    assert copied.dtype == np.float32
    np.testing.assert_array_equal(bound, copied)


def test_resident_on_the_cpu_is_the_array_in_the_graphs_dtype(unet: Graph) -> None:
    context = unet.input_of_rank(3)
    value = unet.resident(context, _feeds(unet)[context])
    assert unet.device == "cpu"
    assert isinstance(value, np.ndarray) and value.dtype == context.dtype and value.flags.c_contiguous
